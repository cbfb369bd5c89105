"""How every Kafka client of the platform logs in, in one place: each producer, consumer and admin
client (the services' consumers and dead-letter producers, the relay, lagmon, the redrive, the
topics CLI, the testkit) is built with `client_options()`.

A service's identity comes from its own settings (`<PREFIX>_KAFKA_SECURITY_PROTOCOL`,
`_KAFKA_SASL_MECHANISM`, `_KAFKA_SASL_USERNAME`, `_KAFKA_SASL_PASSWORD`, `_KAFKA_SSL_CAFILE`;
`KafkaClientSettings`), which its entry point passes to `configure()`. A process that configured
nothing (operators' tools, tests, the stack's scripts) uses the stack's `BLOG_KAFKA_*` variables
(`make up` with KAFKA_AUTH=scram writes the admin user's there), else plaintext.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any, Literal

from aiokafka.helpers import create_ssl_context
from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

SecurityProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
STACK_ENV_PREFIX = "BLOG_KAFKA_"
# How often every long-lived client refreshes its metadata even without errors (aiokafka's
# default: 5 minutes). Short, because aiokafka asks only the brokers of its last metadata, never
# the bootstrap list again: a client that last refreshed while one broker was up is stuck (no
# coordinator, no fetch, no send) if that broker goes down before a refresh shows the others are
# back. New partitions are picked up within this time too.
METADATA_MAX_AGE_MS = 5_000
FIELDS = ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password", "ssl_cafile")


class KafkaSecurity(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # A CA bundle to verify the brokers' certificates (SSL, SASL_SSL); None: the system's.
    ssl_cafile: str | None = None

    @model_validator(mode="after")
    def _sasl_is_complete(self) -> KafkaSecurity:
        if self.security_protocol.startswith("SASL_"):
            missing = [
                name
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(f"{self.security_protocol} needs {', '.join(missing)}")
        return self

    @property
    def username(self) -> str | None:
        return self.sasl_username if self.security_protocol.startswith("SASL_") else None

    def options(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer / AIOKafkaConsumer / AIOKafkaAdminClient."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL_"):
            assert self.sasl_password is not None  # the validator says so
            options |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password.get_secret_value(),
            }
        if self.security_protocol.endswith("SSL"):
            context: ssl.SSLContext = create_ssl_context(cafile=self.ssl_cafile)
            options["ssl_context"] = context
        return options

    def __repr__(self) -> str:
        return f"KafkaSecurity({self.security_protocol}, user={self.username})"


def security_from_mapping(values: Mapping[str, str], prefix: str) -> KafkaSecurity:
    """From `<prefix>SECURITY_PROTOCOL`, `<prefix>SASL_MECHANISM`, ... (unset: the defaults)."""
    found: dict[str, Any] = {
        name: values[f"{prefix}{name.upper()}"]
        for name in FIELDS
        if values.get(f"{prefix}{name.upper()}")
    }
    return KafkaSecurity(**found)


_configured: KafkaSecurity | None = None


def configure(security: KafkaSecurity | None) -> None:
    """This process's identity from now on (a service's entry point, from its settings);
    None: back to the stack's `BLOG_KAFKA_*` variables."""
    global _configured
    _configured = security


def current() -> KafkaSecurity:
    return _configured if _configured is not None else stack_security()


def stack_security(environ: Mapping[str, str] | None = None) -> KafkaSecurity:
    """The stack's own identity (`BLOG_KAFKA_*`, the admin user in KAFKA_AUTH=scram mode)."""
    return security_from_mapping(os.environ if environ is None else environ, STACK_ENV_PREFIX)


def client_options() -> dict[str, Any]:
    """The security keyword arguments every Kafka client of this process is built with."""
    return current().options()

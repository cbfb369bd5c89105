"""Settings every consumer-group service shares; each service subclasses them with its own env
prefix (e.g. `COUNTER_`) and its own fields, and a bad value fails at start-up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from service_kit.consumer import ConsumerConfig
from service_kit.kafka_clients import (
    METADATA_MAX_AGE_MS,
    KafkaSecurity,
    SaslMechanism,
    SecurityProtocol,
)
from service_kit.topics import dead_letter_topic, retry_topic


class KafkaClientSettings(BaseSettings):
    """How the service logs in to Kafka (its own user: deploy/k8s/platform/kafka-users.yaml);
    the entry point hands `kafka_security()` to `service_kit.kafka_clients.configure`."""

    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None

    def kafka_security(self) -> KafkaSecurity:
        return KafkaSecurity(
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_cafile=self.kafka_ssl_cafile,
        )


class ConsumerGroupSettings(KafkaClientSettings):
    # Comma-separated brokers (`host:port,host:port,...`): any live one is enough to connect.
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    topic: str = Field(min_length=1)  # each service sets its own default
    # New partitions are consumed, and brokers back from an outage known, within this time
    # (see kafka_clients.METADATA_MAX_AGE_MS).
    kafka_metadata_max_age_ms: int = Field(default=METADATA_MAX_AGE_MS, ge=1000)
    group_id: str = Field(min_length=1)  # each service sets its own default
    consumer_enabled: bool = True
    max_batch: int = Field(default=500, ge=1, le=10_000)
    # A record failing in the handler for a reason of its own (not an outage) is tried this many
    # times alone, then dead-lettered.
    record_attempts: int = Field(default=3, ge=1, le=100)
    # The group's redrive (`python -m <svc> redrive`) keeps a record redriven this many times.
    redrive_max_attempts: int = Field(default=3, ge=1, le=100)
    log_level: str = "INFO"
    # text (default) or json (one object per line); unset: the shared LOG_FORMAT, else text.
    log_format: Literal["text", "json"] | None = None

    @property
    def dlq_topic(self) -> str:
        """This group's own dead-letter topic, declared in the service's topics file."""
        return dead_letter_topic(self.topic, self.group_id)

    @property
    def retry_topic(self) -> str:
        """This group's own retry topic (its redrive's destination), declared beside its DLQ."""
        return retry_topic(self.topic, self.group_id)

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            bootstrap_servers=self.kafka_bootstrap_servers,
            topic=self.topic,
            group_id=self.group_id,
            dlq_topic=self.dlq_topic,
            retry_topic=self.retry_topic,
            max_batch=self.max_batch,
            record_attempts=self.record_attempts,
            metadata_max_age_ms=self.kafka_metadata_max_age_ms,
        )

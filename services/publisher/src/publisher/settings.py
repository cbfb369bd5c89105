"""Configuration from the environment (prefix `PUBLISHER_`); invalid values stop the process at
start instead of surfacing later."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from blog_events import TOPIC
from service_kit.kafka_clients import METADATA_MAX_AGE_MS
from service_kit.settings import KafkaClientSettings


class PublisherSettings(KafkaClientSettings):
    model_config = SettingsConfigDict(env_prefix="PUBLISHER_", extra="ignore", frozen=True)

    # Secret: it holds the database password, so repr() and logs of the settings show `**********`.
    database_url: SecretStr = Field(min_length=1)
    # Comma-separated brokers (`host:port,host:port,...`): any live one is enough to connect.
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    # Created by the publisher team's topics file (`python -m publisher topics apply`), never by
    # the relay, which waits for it.
    topic: str = Field(default=TOPIC, min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "INFO"
    # text (default) or json (one object per line); unset: the shared LOG_FORMAT, else text.
    log_format: Literal["text", "json"] | None = None
    relay_enabled: bool = True
    # false: the schema is migrated beforehand (`python -m publisher migrate`, e.g. the chart's
    # hook Job), so replicas start without running DDL.
    migrate_on_start: bool = True
    relay_batch: int = Field(default=500, ge=1, le=10_000)
    # Fallback poll when no NOTIFY arrives (e.g. a notification lost while reconnecting).
    relay_poll_interval_s: float = Field(default=1.0, gt=0)
    # How often a standby replica retries to become the relay leader.
    relay_standby_retry_s: float = Field(default=2.0, gt=0)
    # The relay's lock session (see publisher.relay_lock): PostgreSQL ends it after this long
    # without a statement (idle_session_timeout), which frees the lock of a frozen or cut-off
    # leader; a live replica touches it every quarter of it. Also its statement_timeout.
    relay_lock_idle_timeout_s: float = Field(default=10.0, ge=2.0, le=600.0)
    relay_lock_statement_timeout_s: float = Field(default=10.0, ge=1.0, le=600.0)
    relay_retry_initial_s: float = Field(default=0.2, gt=0)
    relay_retry_max_s: float = Field(default=10.0, gt=0)
    status_groups: list[str] = Field(default_factory=lambda: ["counter", "indexer"])
    max_body_bytes: int = Field(default=256 * 1024, ge=1)
    db_pool_min_size: int = Field(default=1, ge=0)
    db_pool_max_size: int = Field(default=10, ge=1)
    # A request waiting longer than this for PostgreSQL gets 503 rather than hanging.
    db_timeout_s: float = Field(default=5.0, gt=0)
    kafka_request_timeout_ms: int = Field(default=10_000, ge=1000)
    # Partitions added to the topic get keys, and brokers back from an outage are known, within
    # this time (why it is short: service_kit.kafka_clients.METADATA_MAX_AGE_MS).
    kafka_metadata_max_age_ms: int = Field(default=METADATA_MAX_AGE_MS, ge=1000)
    # Writes (POST/PUT/DELETE) per author per second in this process, with bursts up to
    # `rate_limit_burst`; 0 turns the limit off. Generous: it stops runaway clients, not load.
    rate_limit_per_s: float = Field(default=50.0, ge=0)
    rate_limit_burst: int = Field(default=100, ge=1)
    # A valid token is trusted for this long without asking PostgreSQL again (one statement less
    # per write), so a revoked token still works for up to this long on each replica; 0: every
    # request looks its token up. Tokens kept: at most `token_cache_max_entries` per process.
    token_cache_ttl_s: float = Field(default=5.0, ge=0, le=300)
    token_cache_max_entries: int = Field(default=10_000, ge=1)
    # How long the answer to a write with an Idempotency-Key is kept for retries (24 h), and how
    # often expired keys are deleted.
    idempotency_key_ttl_s: float = Field(default=24 * 3600, gt=0)
    idempotency_purge_interval_s: float = Field(default=600, gt=0)

    @model_validator(mode="after")
    def _standby_retries_within_the_lock_bound(self) -> PublisherSettings:
        # A standby that asks for the lock less often than the lock can be freed would make the
        # takeover bound its own retry interval.
        if self.relay_standby_retry_s > self.relay_lock_idle_timeout_s:
            raise ValueError(
                "relay_standby_retry_s must not exceed relay_lock_idle_timeout_s "
                f"({self.relay_standby_retry_s} > {self.relay_lock_idle_timeout_s})"
            )
        return self

    @property
    def dsn(self) -> str:
        """The database URL in clear, for the database clients only."""
        return self.database_url.get_secret_value()

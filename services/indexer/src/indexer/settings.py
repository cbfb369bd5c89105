"""Configuration from `INDEXER_*` environment variables; a bad or missing value stops start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from blog_events import TOPIC


class IndexerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXER_", extra="ignore", frozen=True)

    es_url: str = Field(min_length=1)
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    topic: str = Field(default=TOPIC, min_length=1)
    # Partition count used only when this service has to create the topic itself.
    topic_partitions: int = Field(default=6, ge=1)
    group_id: str = Field(default="indexer", min_length=1)
    index_alias: str = Field(default="blogs", min_length=1, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    host: str = "127.0.0.1"
    port: int = Field(default=8002, ge=1, le=65535)
    consumer_enabled: bool = True
    max_batch: int = Field(default=500, ge=1, le=10_000)
    # Fault injection for tests: exit after this many applied batches, before committing offsets.
    crash_after_effect_batches: int | None = Field(default=None, ge=1)
    log_level: str = "INFO"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

    @property
    def index_name(self) -> str:
        """The concrete index the alias points at when this service creates it."""
        return f"{self.index_alias}-v1"

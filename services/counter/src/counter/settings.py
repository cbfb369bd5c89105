"""Configuration from the environment (prefix `COUNTER_`); a bad value fails at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from blog_events import TOPIC


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COUNTER_", extra="ignore", frozen=True)

    database_url: str = Field(min_length=1)
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    topic: str = Field(default=TOPIC, min_length=1)
    topic_partitions: int = Field(default=6, ge=1)
    group_id: str = Field(default="counter", min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=1, le=65535)
    consumer_enabled: bool = True
    max_batch: int = Field(default=500, ge=1)
    # Fault injection for tests only: exit after this many applied batches, before committing.
    crash_after_effect_batches: int | None = Field(default=None, ge=1)
    log_level: str = "INFO"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

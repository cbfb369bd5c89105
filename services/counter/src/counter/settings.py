"""Configuration from the environment (prefix `COUNTER_`); a bad value fails at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from blog_events import TOPIC
from service_kit.settings import ConsumerGroupSettings


class Settings(ConsumerGroupSettings):
    model_config = SettingsConfigDict(env_prefix="COUNTER_", extra="ignore", frozen=True)

    database_url: str = Field(min_length=1)
    topic: str = Field(default=TOPIC, min_length=1)
    group_id: str = Field(default="counter", min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=1, le=65535)
    # false: the schema is migrated beforehand (`python -m counter migrate`, e.g. the chart's
    # hook Job), so replicas start without running DDL.
    migrate_on_start: bool = True

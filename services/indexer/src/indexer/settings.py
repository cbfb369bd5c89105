"""Configuration from `INDEXER_*` environment variables; a bad or missing value stops start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from blog_events import TOPIC
from service_kit.settings import ConsumerGroupSettings


class IndexerSettings(ConsumerGroupSettings):
    model_config = SettingsConfigDict(env_prefix="INDEXER_", extra="ignore", frozen=True)

    es_url: str = Field(min_length=1)
    topic: str = Field(default=TOPIC, min_length=1)
    group_id: str = Field(default="indexer", min_length=1)
    index_alias: str = Field(default="blogs", min_length=1, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    host: str = "127.0.0.1"
    port: int = Field(default=8002, ge=1, le=65535)
    # false: the index and its alias are created beforehand (`python -m indexer migrate`, e.g.
    # the chart's hook Job), so replicas start without creating them.
    migrate_on_start: bool = True

    @property
    def index_name(self) -> str:
        """The concrete index the alias points at when this service creates it."""
        return f"{self.index_alias}-v1"

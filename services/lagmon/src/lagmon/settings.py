"""Configuration from the environment (prefix `LAGMON_`); a bad value fails at start-up."""

from __future__ import annotations

import json
from typing import Annotated, Any, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from lagmon.rules import RuleConfig
from service_kit.settings import KafkaClientSettings


class Settings(KafkaClientSettings):
    model_config = SettingsConfigDict(env_prefix="LAGMON_", extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    # Every consumer group with committed offsets on one of these topics is monitored.
    topics: list[str] = Field(default_factory=lambda: ["blog-events"], min_length=1)
    # Groups that must exist: without a committed offset on the watched topics they are
    # NOTFOUND (not invisible). Comma-separated (`counter,indexer`) or a JSON list; "" for none.
    expected_groups: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["counter", "indexer"]
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8003, ge=1, le=65535)
    poll_interval_s: float = Field(default=5.0, gt=0)
    # The sliding window the status rules look at (see lagmon.rules).
    window_s: float = Field(default=120.0, gt=0)
    # Members present, committed offset unchanged this long with lag > 0: STALL.
    stall_after_s: float = Field(default=30.0, gt=0)
    # Consecutive samples showing lag and no member before a group is STOP (the grace).
    stop_after_samples: int = Field(default=2, ge=1)
    # Fewer observations than this in the window: not enough evidence for WARN/STALL.
    min_observations: int = Field(default=3, ge=2)
    # How much history the page's chart and /api/history keep.
    history_s: float = Field(default=900.0, gt=0)
    # Deadline for fetching the records whose timestamps give the lag in seconds.
    timestamp_fetch_timeout_s: float = Field(default=3.0, gt=0)
    request_timeout_s: float = Field(default=10.0, gt=0)
    # A whole sample (several requests) taking longer fails as ERR and the clients are rebuilt.
    sample_timeout_s: float = Field(default=30.0, gt=0)
    log_level: str = "INFO"

    @field_validator("expected_groups", mode="before")
    @classmethod
    def _split_groups(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [name.strip() for name in text.split(",") if name.strip()]
        return value

    @model_validator(mode="after")
    def _windows_are_consistent(self) -> Self:
        if self.stall_after_s > self.window_s:
            raise ValueError("stall_after_s must not exceed window_s")
        if self.history_s < self.window_s:
            raise ValueError("history_s must be at least window_s")
        if self.sample_timeout_s <= self.request_timeout_s:
            raise ValueError("sample_timeout_s must exceed request_timeout_s")
        return self

    @property
    def rules(self) -> RuleConfig:
        return RuleConfig(
            window_s=self.window_s,
            stall_after_s=self.stall_after_s,
            min_observations=self.min_observations,
            stop_after_samples=self.stop_after_samples,
        )

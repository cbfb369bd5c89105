"""The consumer's plain settings (services build them from their pydantic settings)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConsumerConfig:
    bootstrap_servers: str
    topic: str
    group_id: str
    dlq_topic: str
    max_batch: int = 500
    poll_timeout_ms: int = 200
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0

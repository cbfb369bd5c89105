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
    # Fault injection for tests: after this many successful handler calls, os._exit(137)
    # AFTER the effect and BEFORE the offset commit.
    crash_after_effect_batches: int | None = None

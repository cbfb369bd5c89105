"""The consumer's plain settings (services build them from their pydantic settings)."""

from __future__ import annotations

from dataclasses import dataclass

from service_kit.consumer.isolation import RetryPolicy
from service_kit.kafka_clients import METADATA_MAX_AGE_MS


@dataclass(frozen=True)
class ConsumerConfig:
    bootstrap_servers: str
    topic: str
    group_id: str
    dlq_topic: str
    # The group's own retry topic (`<topic>.<group>.retry`, fed by its redrive), read beside
    # `topic`; None: only `topic`.
    retry_topic: str | None = None
    max_batch: int = 500
    poll_timeout_ms: int = 200
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    # Partitions added to the topic are picked up (the group rebalances), and brokers back from
    # an outage are known, within this time (why it is short: kafka_clients.METADATA_MAX_AGE_MS).
    metadata_max_age_ms: int = METADATA_MAX_AGE_MS
    # Tries of a record isolated by a record-level failure before it is dead-lettered.
    record_attempts: int = 3
    # Handler dead letters in a row after which failures count as systemic (retried, not
    # dead-lettered) until a record succeeds again.
    dead_letter_streak_limit: int = 100

    @property
    def topics(self) -> list[str]:
        """What the group subscribes to."""
        return [self.topic, *([self.retry_topic] if self.retry_topic else [])]

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            retry_initial_s=self.retry_initial_s,
            retry_max_s=self.retry_max_s,
            record_attempts=self.record_attempts,
            dead_letter_streak_limit=self.dead_letter_streak_limit,
        )

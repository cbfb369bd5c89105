"""Settings every consumer-group service shares; each service subclasses them with its own env
prefix (e.g. `COUNTER_`) and its own fields, and a bad value fails at start-up."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

from service_kit.consumer import ConsumerConfig


class ConsumerGroupSettings(BaseSettings):
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    topic: str = Field(min_length=1)  # each service sets its own default
    # Partition count used only when the service has to create the topic itself.
    topic_partitions: int = Field(default=6, ge=1)
    group_id: str = Field(min_length=1)  # each service sets its own default
    consumer_enabled: bool = True
    max_batch: int = Field(default=500, ge=1, le=10_000)
    # A record failing in the handler for a reason of its own (not an outage) is tried this many
    # times alone, then dead-lettered.
    record_attempts: int = Field(default=3, ge=1, le=100)
    log_level: str = "INFO"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            bootstrap_servers=self.kafka_bootstrap_servers,
            topic=self.topic,
            group_id=self.group_id,
            dlq_topic=self.dlq_topic,
            max_batch=self.max_batch,
            record_attempts=self.record_attempts,
        )

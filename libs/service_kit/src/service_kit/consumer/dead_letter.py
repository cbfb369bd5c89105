"""The dead-letter topic: a record the group cannot apply is copied there as it is (key, value,
its own headers), with headers saying why and where from, before its offset is committed."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from service_kit.consumer.records import Record
from service_kit.kafka_clients import METADATA_MAX_AGE_MS, client_options

log = logging.getLogger(__name__)

# A Kafka header has no hard limit, but a reason is for humans: keep it short.
DLQ_REASON_MAX_BYTES = 1000
DLQ_HEADER_PREFIX = "dlq-"


def truncate_utf8(text: str, max_bytes: int) -> bytes:
    """`text` as UTF-8, cut to at most `max_bytes` without splitting a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return encoded
    return encoded[:max_bytes].decode("utf-8", errors="ignore").encode("utf-8")


def dlq_headers(
    *,
    reason: str,
    group: str,
    topic: str,
    partition: int,
    offset: int,
    failed_at: datetime,
    original: Sequence[tuple[str, bytes]] = (),
) -> list[tuple[str, bytes]]:
    """The headers of a dead-lettered record: its own headers (minus stale `dlq-*` ones from an
    earlier dead-lettering) followed by why and where from."""
    kept = [(key, value) for key, value in original if not key.startswith(DLQ_HEADER_PREFIX)]
    return [
        *kept,
        ("dlq-reason", truncate_utf8(reason or "unknown", DLQ_REASON_MAX_BYTES)),
        ("dlq-group", group.encode()),
        ("dlq-source-topic", topic.encode()),
        ("dlq-source-partition", str(partition).encode()),
        ("dlq-source-offset", str(offset).encode()),
        ("dlq-failed-at", failed_at.astimezone(UTC).isoformat().encode()),
    ]


class DeadLetterWriter:
    """An idempotent producer (acks=all) to the group's dead-letter topic: a write returns once
    the copy is durable, so the source offset may then be committed."""

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        dlq_topic: str,
        metadata_max_age_ms: int = METADATA_MAX_AGE_MS,
    ) -> None:
        self.group_id = group_id
        self.dlq_topic = dlq_topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=f"{group_id}-{os.getpid()}-dlq",
            acks="all",
            enable_idempotence=True,
            metadata_max_age_ms=metadata_max_age_ms,
            **client_options(),
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def write(self, record: Record, reason: str) -> None:
        headers = dlq_headers(
            reason=reason,
            group=self.group_id,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            failed_at=datetime.now(UTC),
            original=list(record.headers or ()),
        )
        await self._producer.send_and_wait(
            self.dlq_topic, key=record.key, value=record.value, headers=headers
        )
        log.warning(
            "group %s: %s[%d]@%d dead-lettered to %s: %s",
            self.group_id,
            record.topic,
            record.partition,
            record.offset,
            self.dlq_topic,
            reason[:200],
        )

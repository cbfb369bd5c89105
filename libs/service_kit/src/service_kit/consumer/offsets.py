"""Which offsets a batch commits."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from service_kit.consumer.records import Record


def commit_offsets(records: Sequence[Record]) -> dict[TopicPartition, OffsetAndMetadata]:
    """`last offset + 1` for every partition that appears in `records`."""
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        current = offsets.get(tp)
        if current is None or record.offset + 1 > current.offset:
            offsets[tp] = OffsetAndMetadata(record.offset + 1, "")
    return offsets

"""Which offsets a batch commits."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from service_kit.consumer.records import Record


def commit_offsets(records: Sequence[Record]) -> dict[TopicPartition, OffsetAndMetadata]:
    """`last offset + 1` for every partition that appears in `records`."""
    # Plain tuples per record, the named ones per partition: ~0.4 us less per record.
    last: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        if record.offset > last.get(key, -1):
            last[key] = record.offset
    return {
        TopicPartition(topic, partition): OffsetAndMetadata(offset + 1, "")
        for (topic, partition), offset in last.items()
    }


def settled_prefix_offsets(
    records: Sequence[Record], settled: Collection[tuple[str, int, int]]
) -> dict[TopicPartition, OffsetAndMetadata]:
    """For each partition of `records`, `offset + 1` of the last record of the unbroken run of
    settled records (applied or dead-lettered) from its start: what may be committed when the
    batch is abandoned half-way. Partitions whose first record is not settled are left out."""
    by_partition: dict[TopicPartition, list[int]] = {}
    for record in records:
        by_partition.setdefault(TopicPartition(record.topic, record.partition), []).append(
            record.offset
        )
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for tp, partition_offsets in by_partition.items():
        last: int | None = None
        for offset in sorted(partition_offsets):
            if (tp.topic, tp.partition, offset) not in settled:
                break
            last = offset
        if last is not None:
            offsets[tp] = OffsetAndMetadata(last + 1, "")
    return offsets

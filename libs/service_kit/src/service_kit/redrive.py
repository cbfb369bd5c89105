"""Redrive: re-publish dead letters to the topic they came from, once the cause is fixed (a
consumer that now understands them, a dependency that is back).

    python -m service_kit.redrive --bootstrap 127.0.0.1:9092,127.0.0.1:9102 \
        --dlq-topic blog-events.counter.dlq,blog-events.indexer.dlq \
        [--group dlq-redrive] [--dry-run]

Each dead letter is re-published as it is (same key, same value, to the partition it was read
from; its own headers kept, the `dlq-*` ones replaced by `redriven-from`); nothing is "repaired".
A record that is still bad is simply dead-lettered again by the consumers.

- The redrive has its own consumer group on the dead-letter topic: a dead letter is committed
  right after Kafka acknowledged its re-publication, so a second run skips what the first one
  redrove. A crash between the acknowledgement and the commit re-publishes that one record again
  on the next run: harmless, the consumers' effects are idempotent.
- A run reads up to the end offsets seen at its start, so records dead-lettered again while it
  runs are left for the next run instead of looping forever.
- Several groups (counter, indexer) dead-letter the same poison record, each to its own
  dead-letter topic (`<topic>.<group>.dlq`): given several dead-letter topics (comma-separated),
  one run re-publishes copies with the same source topic/partition/offset once.
- `--dry-run` prints what would be redriven and neither publishes nor commits.
Run one redrive per dead-letter topic at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import UnknownTopicOrPartitionError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from service_kit.consumer import DLQ_HEADER_PREFIX

DEFAULT_GROUP = "dlq-redrive"
REDRIVEN_FROM_HEADER = "redriven-from"
# Polls in a row that return nothing while records are still expected before giving up.
MAX_EMPTY_POLLS = 50
POLL_TIMEOUT_MS = 200
MAX_RECORDS_PER_POLL = 500


class Verdict(Enum):
    REDRIVE = "redrive"
    DUPLICATE = "duplicate"  # the same source record, already redriven in this run
    NO_SOURCE = "no-source"  # no usable dlq-source-topic header: nowhere to send it back


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic, with the headers the consumer put on it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def from_record(cls, record: ConsumerRecord[Any, Any]) -> DeadLetter:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=tuple((name, bytes(value)) for name, value in record.headers or ()),
        )

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", errors="replace")
        return None

    @property
    def source_topic(self) -> str | None:
        return self.header("dlq-source-topic") or None

    @property
    def source_partition(self) -> int | None:
        text = self.header("dlq-source-partition")
        return int(text) if text is not None and text.isdigit() else None

    @property
    def source_offset(self) -> int | None:
        text = self.header("dlq-source-offset")
        return int(text) if text is not None and text.isdigit() else None

    @property
    def position(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


SourceId = tuple[str, int | None, int | None]


def judge(letter: DeadLetter, redriven_sources: set[SourceId]) -> Verdict:
    """What to do with one dead letter, given the sources already redriven in this run."""
    source = letter.source_topic
    if source is None or source == letter.topic:
        return Verdict.NO_SOURCE
    source_id = (source, letter.source_partition, letter.source_offset)
    # Without a source position two copies cannot be told apart from two distinct records.
    if None not in source_id[1:] and source_id in redriven_sources:
        return Verdict.DUPLICATE
    return Verdict.REDRIVE


def redrive_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The record's own headers without the dead-lettering ones, plus where it was redriven from
    (kept if it is dead-lettered again, since that only replaces `dlq-*` headers)."""
    kept = [
        (name, value)
        for name, value in letter.headers
        if not name.startswith(DLQ_HEADER_PREFIX) and name != REDRIVEN_FROM_HEADER
    ]
    return [*kept, (REDRIVEN_FROM_HEADER, letter.position.encode())]


def describe(letter: DeadLetter) -> str:
    key = letter.key.decode("utf-8", errors="replace") if letter.key is not None else "-"
    reason = (letter.header("dlq-reason") or "?").replace("\n", " ")
    return (
        f"source={letter.source_topic}[{letter.source_partition}]@{letter.source_offset} "
        f"key={key} group={letter.header('dlq-group') or '?'} reason={reason[:160]}"
    )


@dataclass
class RedriveReport:
    dlq_topic: str
    group: str
    dry_run: bool
    redriven: int = 0
    duplicates: int = 0
    without_source: int = 0
    # (dead letter position, destination "topic[partition]@offset") of each re-publication.
    republished: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        verb = "would redrive" if self.dry_run else "redriven"
        return (
            f"{self.dlq_topic} (group {self.group}): {verb} {self.redriven}, "
            f"skipped {self.duplicates} duplicate(s) and {self.without_source} without a source"
        )


async def redrive(
    bootstrap: str,
    dlq_topic: str,
    *,
    group: str = DEFAULT_GROUP,
    dry_run: bool = False,
    out: Callable[[str], None] = print,
) -> RedriveReport:
    """Re-publish the dead letters of `dlq_topic` (one topic or several, comma-separated) not yet
    committed by `group` (see module doc)."""
    report = RedriveReport(dlq_topic=dlq_topic, group=group, dry_run=dry_run)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id=f"{group}-{os.getpid()}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=f"{group}-{os.getpid()}-producer",
        acks="all",
        enable_idempotence=True,
    )
    await consumer.start()
    try:
        await producer.start()
        try:
            await _redrive_with(consumer, producer, report, out)
        finally:
            await producer.stop()
    finally:
        await consumer.stop()
    out(report.summary())
    return report


async def _redrive_with(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    report: RedriveReport,
    out: Callable[[str], None],
) -> None:
    partitions: list[TopicPartition] = []
    for dlq_topic in (name.strip() for name in report.dlq_topic.split(",")):
        if not dlq_topic:
            continue
        try:
            # The producer waits for the topic's metadata (the consumer's only reads a cache).
            partition_ids = await producer.partitions_for(dlq_topic)
        except UnknownTopicOrPartitionError:
            raise SystemExit(f"redrive: topic {dlq_topic} does not exist") from None
        partitions += [TopicPartition(dlq_topic, p) for p in sorted(partition_ids)]
    # Manual assignment: the group only stores this tool's progress (no rebalances to handle).
    consumer.assign(partitions)
    for tp in partitions:
        committed = await consumer.committed(tp)
        if committed is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, committed)
    end_offsets: Mapping[TopicPartition, int] = await consumer.end_offsets(partitions)
    pending = {tp for tp in partitions if await consumer.position(tp) < end_offsets[tp]}
    redriven_sources: set[SourceId] = set()
    empty_polls = 0
    while pending:
        finished = [tp for tp in partitions if tp not in pending]
        if finished:
            consumer.pause(*finished)
        batches = await consumer.getmany(
            *pending, timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_RECORDS_PER_POLL
        )
        records = [r for tp in sorted(batches) for r in batches[tp] if r.offset < end_offsets[tp]]
        empty_polls = 0 if records else empty_polls + 1
        if empty_polls > MAX_EMPTY_POLLS:
            out(f"redrive: no records although some were expected; stopping ({sorted(pending)})")
            return
        for record in records:
            await _handle(
                DeadLetter.from_record(record), consumer, producer, report, out, redriven_sources
            )
        for tp in list(pending):
            if await consumer.position(tp) >= end_offsets[tp]:
                pending.discard(tp)


async def _handle(
    letter: DeadLetter,
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    report: RedriveReport,
    out: Callable[[str], None],
    redriven_sources: set[SourceId],
) -> None:
    verdict = judge(letter, redriven_sources)
    if verdict is Verdict.NO_SOURCE:
        report.without_source += 1
        out(f"skipped {letter.position}: no usable dlq-source-topic header")
    elif verdict is Verdict.DUPLICATE:
        report.duplicates += 1
        out(f"skipped {letter.position}: same source record already redriven ({describe(letter)})")
    elif report.dry_run:
        report.redriven += 1
        redriven_sources.add(
            (letter.source_topic or "", letter.source_partition, letter.source_offset)
        )
        out(f"would redrive {letter.position} -> {letter.source_topic}: {describe(letter)}")
    else:
        assert letter.source_topic is not None
        metadata = await producer.send_and_wait(
            letter.source_topic,
            key=letter.key,
            value=letter.value,
            partition=letter.source_partition,
            headers=redrive_headers(letter),
        )
        destination = f"{metadata.topic}[{metadata.partition}]@{metadata.offset}"
        report.redriven += 1
        report.republished.append((letter.position, destination))
        redriven_sources.add((letter.source_topic, letter.source_partition, letter.source_offset))
        out(f"redriven {letter.position} -> {destination}: {describe(letter)}")
    if not report.dry_run:
        # Committed after the acknowledgement (or the decision to skip): never lost, and a
        # second run does not redrive it again.
        tp = TopicPartition(letter.topic, letter.partition)
        await consumer.commit({tp: OffsetAndMetadata(letter.offset + 1, "")})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service_kit.redrive",
        description="Re-publish dead letters to their source topic (as they are), once each.",
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("BLOG_KAFKA_BOOTSTRAP"),
        required="BLOG_KAFKA_BOOTSTRAP" not in os.environ,
        help="Kafka bootstrap servers, comma-separated (default: $BLOG_KAFKA_BOOTSTRAP)",
    )
    parser.add_argument(
        "--dlq-topic",
        required=True,
        help="the dead-letter topic(s) to drain, comma-separated (a source record dead-lettered "
        "by several groups goes back once)",
    )
    parser.add_argument(
        "--group",
        default=DEFAULT_GROUP,
        help=f"consumer group that records the redrive's progress (default: {DEFAULT_GROUP})",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be redriven; change nothing"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def out(line: str) -> None:
        print(line, flush=True)

    asyncio.run(
        redrive(args.bootstrap, args.dlq_topic, group=args.group, dry_run=args.dry_run, out=out)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Redrive: put one consumer group's dead letters back to that group alone, once the cause is
fixed (a consumer that now understands them, a dependency that is back).

    python -m counter redrive [--dry-run] [--max-attempts N]      (the group's own settings)
    python -m service_kit.redrive --bootstrap B --topic blog-events --consumer-group counter \
        [--max-attempts N] [--group counter-redrive] [--dry-run]

Each dead letter of `<topic>.<group>.dlq` is re-published as it is (same key, same value; its own
headers kept, the `dlq-*` ones replaced by `redriven-from` and `redrive-attempts`) to the group's
retry topic `<topic>.<group>.retry`, which that group's consumer reads beside the source topic and
no other group reads: the counter's redrive never makes the indexer see an event again. Nothing
is "repaired"; the consumer applies a redriven record exactly like an original (its version
guards make a second application a no-op), and a record that still fails is dead-lettered again,
its `redrive-attempts` header kept.

- `redrive-attempts` counts the redrives of a record. One whose count has reached the limit
  (`--max-attempts`, the service's `<PREFIX>_REDRIVE_MAX_ATTEMPTS`) is not redriven again: it
  stays in the dead-letter topic and the run reports it (position, source, reason) for a human.
- The redrive has its own consumer group on the dead-letter topic: a dead letter is committed
  right after Kafka acknowledged its re-publication (or the decision to keep or skip it), so a
  second run skips what the first one handled. A crash between the acknowledgement and the commit
  re-publishes that one record again on the next run: harmless, the consumers are idempotent.
- A run reads up to the end offsets seen at its start, so records dead-lettered again while it
  runs are left for the next run instead of looping forever.
- Copies of one source record (a consumer that crashed after dead-lettering it, before its
  commit) go back once per run.
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
from service_kit.kafka_clients import client_options as kafka_client_options
from service_kit.settings import ConsumerGroupSettings
from service_kit.topics import dead_letter_topic, retry_topic

REDRIVEN_FROM_HEADER = "redriven-from"
REDRIVE_ATTEMPTS_HEADER = "redrive-attempts"
DEFAULT_MAX_ATTEMPTS = 3
# Polls in a row that return nothing while records are still expected before giving up.
MAX_EMPTY_POLLS = 50
POLL_TIMEOUT_MS = 200
MAX_RECORDS_PER_POLL = 500


class Verdict(Enum):
    REDRIVE = "redrive"
    DUPLICATE = "duplicate"  # the same source record, already redriven in this run
    NO_SOURCE = "no-source"  # no usable dlq-source-topic header: not a consumer's dead letter
    EXHAUSTED = "exhausted"  # redriven max-attempts times already: kept for a human


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
    def attempts(self) -> int:
        """How often this record has been redriven before (0: never)."""
        text = self.header(REDRIVE_ATTEMPTS_HEADER)
        return int(text) if text is not None and text.isdigit() else 0

    @property
    def position(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


SourceId = tuple[str, int | None, int | None]


def default_group(consumer_group: str) -> str:
    """The consumer group that records one group's redrive progress on its dead-letter topic."""
    return f"{consumer_group}-redrive"


def judge(
    letter: DeadLetter,
    redriven_sources: set[SourceId],
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Verdict:
    """What to do with one dead letter, given the sources already redriven in this run."""
    source = letter.source_topic
    if source is None or source == letter.topic:
        return Verdict.NO_SOURCE
    if letter.attempts >= max_attempts:
        return Verdict.EXHAUSTED
    source_id = (source, letter.source_partition, letter.source_offset)
    # Without a source position two copies cannot be told apart from two distinct records.
    if None not in source_id[1:] and source_id in redriven_sources:
        return Verdict.DUPLICATE
    return Verdict.REDRIVE


def redrive_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The record's own headers without the dead-lettering ones, plus where it was redriven from
    and its redrive count, one more than before (both kept if it is dead-lettered again, since
    that only replaces `dlq-*` headers)."""
    ours = {REDRIVEN_FROM_HEADER, REDRIVE_ATTEMPTS_HEADER}
    kept = [
        (name, value)
        for name, value in letter.headers
        if not name.startswith(DLQ_HEADER_PREFIX) and name not in ours
    ]
    return [
        *kept,
        (REDRIVEN_FROM_HEADER, letter.position.encode()),
        (REDRIVE_ATTEMPTS_HEADER, str(letter.attempts + 1).encode()),
    ]


def describe(letter: DeadLetter) -> str:
    key = letter.key.decode("utf-8", errors="replace") if letter.key is not None else "-"
    reason = (letter.header("dlq-reason") or "?").replace("\n", " ")
    return (
        f"source={letter.source_topic}[{letter.source_partition}]@{letter.source_offset} "
        f"key={key} group={letter.header('dlq-group') or '?'} "
        f"attempts={letter.attempts} reason={reason[:160]}"
    )


@dataclass
class RedriveReport:
    dlq_topic: str
    retry_topic: str
    group: str
    dry_run: bool
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    redriven: int = 0
    duplicates: int = 0
    without_source: int = 0
    # Positions of the dead letters kept because they reached max_attempts.
    exhausted: list[str] = field(default_factory=list)
    # (dead letter position, destination "topic[partition]@offset") of each re-publication.
    republished: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        verb = "would redrive" if self.dry_run else "redriven"
        return (
            f"{self.dlq_topic} -> {self.retry_topic} (group {self.group}): {verb} "
            f"{self.redriven}, kept {len(self.exhausted)} at the limit of {self.max_attempts} "
            f"attempt(s), skipped {self.duplicates} duplicate(s) and {self.without_source} "
            "without a source"
        )


async def redrive(
    bootstrap: str,
    dlq_topic: str,
    retry_topic: str,
    *,
    group: str,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    dry_run: bool = False,
    out: Callable[[str], None] = print,
    client_options: Mapping[str, Any] | None = None,
) -> RedriveReport:
    """Move the dead letters of `dlq_topic` not yet committed by `group` to `retry_topic` (see
    module doc). `client_options`: the clients' security options (default: this process's,
    `service_kit.kafka_clients`)."""
    if dlq_topic == retry_topic:
        raise ValueError(f"redrive: {dlq_topic} cannot feed itself")
    report = RedriveReport(
        dlq_topic=dlq_topic,
        retry_topic=retry_topic,
        group=group,
        dry_run=dry_run,
        max_attempts=max_attempts,
    )
    options = kafka_client_options() if client_options is None else dict(client_options)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id=f"{group}-{os.getpid()}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **options,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=f"{group}-{os.getpid()}-producer",
        acks="all",
        enable_idempotence=True,
        **options,
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
    for name in (report.dlq_topic, report.retry_topic):
        try:
            # The producer waits for the topic's metadata (the consumer's only reads a cache).
            partition_ids = await producer.partitions_for(name)
        except UnknownTopicOrPartitionError:
            raise SystemExit(
                f"redrive: topic {name} does not exist (declared in the group's topics file: "
                "`make topics`)"
            ) from None
        if name == report.dlq_topic:
            partitions = [TopicPartition(name, p) for p in sorted(partition_ids)]
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
    verdict = judge(letter, redriven_sources, report.max_attempts)
    if verdict is Verdict.NO_SOURCE:
        report.without_source += 1
        out(f"skipped {letter.position}: no usable dlq-source-topic header")
    elif verdict is Verdict.EXHAUSTED:
        report.exhausted.append(letter.position)
        out(
            f"kept {letter.position}: redriven {letter.attempts} time(s), the limit is "
            f"{report.max_attempts}; inspect it by hand ({describe(letter)})"
        )
    elif verdict is Verdict.DUPLICATE:
        report.duplicates += 1
        out(f"skipped {letter.position}: same source record already redriven ({describe(letter)})")
    elif report.dry_run:
        report.redriven += 1
        redriven_sources.add(
            (letter.source_topic or "", letter.source_partition, letter.source_offset)
        )
        out(f"would redrive {letter.position} -> {report.retry_topic}: {describe(letter)}")
    else:
        # Partitioned by key like the source topic: one blog's redriven events stay in order.
        metadata = await producer.send_and_wait(
            report.retry_topic, key=letter.key, value=letter.value, headers=redrive_headers(letter)
        )
        destination = f"{metadata.topic}[{metadata.partition}]@{metadata.offset}"
        report.redriven += 1
        report.republished.append((letter.position, destination))
        redriven_sources.add(
            (letter.source_topic or "", letter.source_partition, letter.source_offset)
        )
        out(f"redriven {letter.position} -> {destination}: {describe(letter)}")
    if not report.dry_run:
        # Committed after the acknowledgement (or the decision to keep or skip): never lost,
        # and a second run does not handle it again (a kept one stays in the topic).
        tp = TopicPartition(letter.topic, letter.partition)
        await consumer.commit({tp: OffsetAndMetadata(letter.offset + 1, "")})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service_kit.redrive",
        description="Move one consumer group's dead letters to its retry topic (as they are).",
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("BLOG_KAFKA_BOOTSTRAP"),
        required="BLOG_KAFKA_BOOTSTRAP" not in os.environ,
        help="Kafka bootstrap servers, comma-separated (default: $BLOG_KAFKA_BOOTSTRAP)",
    )
    parser.add_argument("--topic", required=True, help="the source topic, e.g. blog-events")
    parser.add_argument(
        "--consumer-group",
        required=True,
        help="the group whose dead letters go back to it alone: <topic>.<group>.dlq -> "
        "<topic>.<group>.retry",
    )
    add_redrive_arguments(parser)
    parser.add_argument(
        "--group",
        help="consumer group recording the redrive's progress (default: <consumer-group>-redrive)",
    )
    return parser.parse_args(argv)


def add_redrive_arguments(parser: argparse.ArgumentParser, max_attempts: int = 0) -> None:
    """The options every redrive command has (the services' `redrive` commands too)."""
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=max_attempts or DEFAULT_MAX_ATTEMPTS,
        help="keep (do not redrive) a record redriven this many times already "
        f"(default: {max_attempts or DEFAULT_MAX_ATTEMPTS})",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be redriven; change nothing"
    )


def run_group_redrive(
    bootstrap: str,
    topic: str,
    consumer_group: str,
    *,
    max_attempts: int,
    dry_run: bool,
    group: str | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> int:
    """One group's redrive from a command line: prints each decision and the summary."""
    if max_attempts < 1:
        print("redrive: --max-attempts must be at least 1", file=sys.stderr)
        return 2

    def out(line: str) -> None:
        print(line, flush=True)

    asyncio.run(
        redrive(
            bootstrap,
            dead_letter_topic(topic, consumer_group),
            retry_topic(topic, consumer_group),
            group=group or default_group(consumer_group),
            max_attempts=max_attempts,
            dry_run=dry_run,
            out=out,
            client_options=client_options,
        )
    )
    return 0


def redrive_command(argv: Sequence[str], settings: ConsumerGroupSettings, prog: str) -> int:
    """`python -m <service> redrive [--dry-run] [--max-attempts N]`: the group of the service's
    settings (`<PREFIX>_GROUP_ID`, `_TOPIC`, `_REDRIVE_MAX_ATTEMPTS`, the Kafka connection)."""
    parser = argparse.ArgumentParser(
        prog=f"{prog} redrive",
        description=f"Move group {settings.group_id}'s dead letters ({settings.dlq_topic}) to its "
        f"retry topic ({settings.retry_topic}), which only this group reads.",
    )
    add_redrive_arguments(parser, settings.redrive_max_attempts)
    args = parser.parse_args(argv)
    return run_group_redrive(
        settings.kafka_bootstrap_servers,
        settings.topic,
        settings.group_id,
        max_attempts=args.max_attempts,
        dry_run=args.dry_run,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_group_redrive(
        args.bootstrap,
        args.topic,
        args.consumer_group,
        max_attempts=args.max_attempts,
        dry_run=args.dry_run,
        group=args.group,
    )


if __name__ == "__main__":
    sys.exit(main())

"""The redrive against a real broker: one group's dead letters go to that group's retry topic,
which it reads beside the source topic and no other group reads; what the fixed consumer now
understands is handled, what is still bad is dead-lettered again with its attempt count, a
second run redrives only what is new, and a record at the max-attempts limit is kept."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from blog_events import Envelope, EventDecodeError, decode_event
from blog_testkit import (
    BlogHistory,
    Stack,
    as_record,
    read_topic,
    running_batch_consumer,
    wait_until,
)
from blog_testkit.plugin import create_dead_letter_topics
from service_kit.consumer import (
    BatchConsumer,
    ConsumedEvent,
    ConsumerConfig,
    ConsumerMetrics,
    Decoder,
)
from service_kit.redrive import REDRIVE_ATTEMPTS_HEADER, REDRIVEN_FROM_HEADER, redrive
from service_kit.topics import dead_letter_topic, retry_topic

pytestmark = pytest.mark.integration

NEEDS_THE_FIX = "needs the fix"
POISON = b"\x00\xffnot an event at all"


def event_titled(title: str) -> tuple[bytes, bytes]:
    return as_record(BlogHistory().publish(title=title))


class Fix:
    """The "deployment" of a fix: before it, the consumers reject events titled NEEDS_THE_FIX
    (as an older consumer rejects a field it does not know yet); after it, they accept them."""

    deployed = False

    def decode(self, raw: bytes | None) -> Envelope:
        envelope = decode_event(raw)
        if not self.deployed and getattr(envelope.payload, "title", "") == NEEDS_THE_FIX:
            raise EventDecodeError("payload.title: not understood by this version")
        return envelope

    @property
    def decoder(self) -> Decoder[Envelope]:
        # The decoder the consumers are given: it consults `deployed` at each record.
        return Decoder(self.decode, (EventDecodeError,))


@contextlib.asynccontextmanager
async def consuming(
    stack: Stack, topic: str, group: str, seen: list[str], decoder: Decoder[Envelope]
) -> AsyncIterator[ConsumerMetrics]:
    async def handler(events: Sequence[ConsumedEvent[Envelope]]) -> None:
        seen.extend(getattr(e.envelope.payload, "title", "") for e in events)

    metrics = ConsumerMetrics(CollectorRegistry())
    config = ConsumerConfig(
        bootstrap_servers=stack.kafka_bootstrap,
        topic=topic,
        group_id=group,
        # Each group's own, as the teams' topics files declare them.
        dlq_topic=dead_letter_topic(topic, group),
        retry_topic=retry_topic(topic, group),
        retry_initial_s=0.05,
        retry_max_s=0.2,
    )
    async with running_batch_consumer(BatchConsumer(config, handler, metrics, decoder=decoder)):
        yield metrics


def accept_all() -> Decoder[Envelope]:
    return Decoder(decode_event, (EventDecodeError,))


def dead_lettered(metrics: ConsumerMetrics, group: str) -> float:
    return metrics.events_dead_lettered.labels(group=group)._value.get()  # type: ignore[no-any-return]


async def test_a_groups_redrive_feeds_that_group_only_until_max_attempts(
    stack: Stack, topic: str
) -> None:
    fix = Fix()
    # `counter` rejects NEEDS_THE_FIX until the fix; `indexer` understands it from the start;
    # both reject the poison.
    counter, indexer = f"{topic}-counter", f"{topic}-indexer"
    await create_dead_letter_topics(stack.kafka_bootstrap, topic, [counter, indexer])
    counter_dlq, counter_retry = dead_letter_topic(topic, counter), retry_topic(topic, counter)
    indexer_retry = retry_topic(topic, indexer)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in (event_titled("good before"), event_titled(NEEDS_THE_FIX)):
            await producer.send_and_wait(topic, key=key, value=value)
        await producer.send_and_wait(topic, key=b"poison-key", value=POISON)
        await producer.send_and_wait(topic, *reversed(event_titled("good after")))
    finally:
        await producer.stop()

    seen_c: list[str] = []
    seen_i: list[str] = []
    progress = f"{counter}-redrive"
    async with (
        consuming(stack, topic, counter, seen_c, fix.decoder) as metrics_c,
        consuming(stack, topic, indexer, seen_i, accept_all()) as metrics_i,
    ):

        async def dead_letters(count_c: int, count_i: int) -> bool:
            return (dead_lettered(metrics_c, counter), dead_lettered(metrics_i, indexer)) == (
                count_c,
                count_i,
            )

        await wait_until(lambda: dead_letters(2, 1), timeout=30, what="the first dead letters")
        assert sorted(seen_c) == ["good after", "good before"]
        assert sorted(seen_i) == ["good after", "good before", NEEDS_THE_FIX]

        fix.deployed = True
        dry = await redrive(
            stack.kafka_bootstrap, counter_dlq, counter_retry, group=progress, dry_run=True
        )
        assert (dry.redriven, dry.republished, dry.exhausted) == (2, [], [])
        assert await read_topic(stack.kafka_bootstrap, counter_retry) == []

        lines: list[str] = []
        report = await redrive(
            stack.kafka_bootstrap,
            counter_dlq,
            counter_retry,
            group=progress,
            max_attempts=2,
            out=lines.append,
        )
        assert (report.redriven, report.duplicates, report.without_source) == (2, 0, 0)
        assert lines[-1] == report.summary()
        retried = await read_topic(stack.kafka_bootstrap, counter_retry)
        sources = await read_topic(stack.kafka_bootstrap, topic)
        needs_fix = next(r.value for r in sources if NEEDS_THE_FIX.encode() in r.value)
        assert sorted(r.value for r in retried) == sorted([POISON, needs_fix])
        assert len(retried) == 2
        assert all(dict(r.headers)[REDRIVE_ATTEMPTS_HEADER] == b"1" for r in retried)
        # Nothing went back to the source topic, nothing to the other group.
        assert len(await read_topic(stack.kafka_bootstrap, topic)) == 4
        assert await read_topic(stack.kafka_bootstrap, indexer_retry) == []

        # The fixed counter applies the redriven event like an original; the poison comes back
        # to its DLQ with the attempt count; the indexer sees nothing again.
        await wait_until(lambda: dead_letters(3, 1), timeout=30, what="the poison again")

        async def counter_applied_it() -> bool:
            return NEEDS_THE_FIX in seen_c

        await wait_until(counter_applied_it, timeout=30, what="the redriven event applied")
        again = [
            r
            for r in await read_topic(stack.kafka_bootstrap, counter_dlq)
            if REDRIVEN_FROM_HEADER in dict(r.headers)
        ]
        assert [(r.value, dict(r.headers)[REDRIVE_ATTEMPTS_HEADER]) for r in again] == [
            (POISON, b"1")
        ]
        assert dict(again[0].headers)["dlq-source-topic"] == counter_retry.encode()

        # A second run redrives only the poison (the first run's dead letters are committed).
        second = await redrive(
            stack.kafka_bootstrap, counter_dlq, counter_retry, group=progress, max_attempts=2
        )
        assert (second.redriven, second.exhausted) == (1, [])
        await wait_until(lambda: dead_letters(4, 1), timeout=30, what="still poison")

        # Redriven twice: the limit. The third run keeps it in the DLQ and says so.
        lines.clear()
        third = await redrive(
            stack.kafka_bootstrap,
            counter_dlq,
            counter_retry,
            group=progress,
            max_attempts=2,
            out=lines.append,
        )
        assert third.redriven == 0
        assert len(third.exhausted) == 1
        assert any(
            line.startswith(f"kept {third.exhausted[0]}: redriven 2 time(s)") for line in lines
        )
        assert "kept 1 at the limit of 2 attempt(s)" in third.summary()
        assert len(await read_topic(stack.kafka_bootstrap, counter_retry)) == 3

        assert sorted(seen_c) == ["good after", "good before", NEEDS_THE_FIX]
        assert sorted(seen_i) == ["good after", "good before", NEEDS_THE_FIX]
        assert await read_topic(stack.kafka_bootstrap, indexer_retry) == []


async def test_redrive_of_an_empty_dead_letter_topic_does_nothing(stack: Stack, topic: str) -> None:
    await create_dead_letter_topics(stack.kafka_bootstrap, topic, ["g"])
    report = await redrive(
        stack.kafka_bootstrap, f"{topic}.g.dlq", f"{topic}.g.retry", group=f"{topic}-redrive"
    )
    assert (report.redriven, report.duplicates, report.without_source) == (0, 0, 0)
    assert report.exhausted == []


async def test_the_command_line_prints_what_it_did(stack: Stack, topic: str) -> None:
    [dlq] = await create_dead_letter_topics(stack.kafka_bootstrap, topic, ["g"])
    retry = retry_topic(topic, "g")
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            dlq,
            key=b"k",
            value=b"v",
            partition=2,
            headers=[
                ("dlq-source-topic", topic.encode()),
                ("dlq-source-partition", b"4"),
                ("dlq-source-offset", b"0"),
                ("dlq-reason", b"<root>: Invalid JSON"),
                ("dlq-group", b"counter"),
            ],
        )
        await producer.send_and_wait(dlq, key=b"k", value=b"lost", partition=1)
    finally:
        await producer.stop()
    command = [
        sys.executable, "-m", "service_kit.redrive",
        "--bootstrap", stack.kafka_bootstrap, "--topic", topic, "--consumer-group", "g",
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert f"redriven {dlq}[2]@0 -> {retry}[" in text
    assert "reason=<root>: Invalid JSON" in text
    assert f"skipped {dlq}[1]@0: no usable dlq-source-topic header" in text
    assert text.rstrip().endswith(
        f"{dlq} -> {retry} (group g-redrive): redriven 1, kept 0 at the limit of 3 attempt(s), "
        "skipped 0 duplicate(s) and 1 without a source"
    )
    records = await read_topic(stack.kafka_bootstrap, retry)
    assert [(r.key, r.value) for r in records] == [(b"k", b"v")]
    assert await read_topic(stack.kafka_bootstrap, topic) == []
    # Nothing left to redrive for this group.
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert "redriven 0, kept 0 at the limit of 3 attempt(s), skipped 0" in out.decode()

"""The redrive against a real broker: records dead-lettered by two consumer groups go back to the
source topic once, what the fixed consumer now understands is handled, what is still bad is
dead-lettered again, and a second run redrives only what is new."""

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
from blog_testkit.plugin import create_topic
from service_kit.consumer import (
    BatchConsumer,
    ConsumedEvent,
    ConsumerConfig,
    ConsumerMetrics,
    Decoder,
)
from service_kit.redrive import REDRIVEN_FROM_HEADER, redrive

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
        # One dead-letter topic for both groups here: the redrive must still send each source
        # record back once (the platform gives each group its own, `<topic>.<group>.dlq`).
        dlq_topic=f"{topic}.dlq",
        retry_initial_s=0.05,
        retry_max_s=0.2,
    )
    async with running_batch_consumer(BatchConsumer(config, handler, metrics, decoder=decoder)):
        yield metrics


def dead_lettered(metrics: ConsumerMetrics, group: str) -> float:
    return metrics.events_dead_lettered.labels(group=group)._value.get()  # type: ignore[no-any-return]


async def test_redrive_republishes_each_dead_letter_once_after_the_fix(
    stack: Stack, topic: str
) -> None:
    fix = Fix()
    dlq = f"{topic}.dlq"
    await create_topic(stack.kafka_bootstrap, dlq)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in (event_titled("good before"), event_titled(NEEDS_THE_FIX)):
            await producer.send_and_wait(topic, key=key, value=value)
        await producer.send_and_wait(topic, key=b"poison-key", value=POISON)
        await producer.send_and_wait(topic, *reversed(event_titled("good after")))
    finally:
        await producer.stop()

    seen_a: list[str] = []
    seen_b: list[str] = []
    group_a, group_b = f"{topic}-counter", f"{topic}-indexer"
    async with (
        consuming(stack, topic, group_a, seen_a, fix.decoder) as metrics_a,
        consuming(stack, topic, group_b, seen_b, fix.decoder) as metrics_b,
    ):

        async def both_dead_lettered(count: int) -> bool:
            return (
                dead_lettered(metrics_a, group_a) == count
                and dead_lettered(metrics_b, group_b) == count
            )

        await wait_until(lambda: both_dead_lettered(2), timeout=30, what="2 dead letters per group")
        assert sorted(seen_a) == sorted(seen_b) == ["good after", "good before"]
        assert len(await read_topic(stack.kafka_bootstrap, dlq)) == 4

        fix.deployed = True
        dry = await redrive(stack.kafka_bootstrap, dlq, group=f"{topic}-redrive", dry_run=True)
        assert (dry.redriven, dry.duplicates, dry.republished) == (2, 2, [])
        # The dry run published nothing.
        assert len(await read_topic(stack.kafka_bootstrap, topic)) == 4

        lines: list[str] = []
        report = await redrive(
            stack.kafka_bootstrap, dlq, group=f"{topic}-redrive", out=lines.append
        )
        # Each source record once, although both groups dead-lettered it.
        assert (report.redriven, report.duplicates, report.without_source) == (2, 2, 0)
        assert lines[-1] == report.summary()
        source_records = await read_topic(stack.kafka_bootstrap, topic)
        redriven = [r for r in source_records if REDRIVEN_FROM_HEADER in dict(r.headers)]
        assert len(source_records) == 6
        assert sorted(r.value for r in redriven) == sorted(
            [POISON, next(r.value for r in source_records if NEEDS_THE_FIX.encode() in r.value)]
        )
        poison_copy = next(r for r in redriven if r.value == POISON)
        assert poison_copy.key == b"poison-key"

        # The fixed consumers handle the redriven event; the poison is dead-lettered again,
        # once per group, and says where it was redriven from.
        await wait_until(
            lambda: both_dead_lettered(3), timeout=30, what="the poison dead-lettered again"
        )

        async def fixed_event_handled() -> bool:
            return NEEDS_THE_FIX in seen_a and NEEDS_THE_FIX in seen_b

        await wait_until(fixed_event_handled, timeout=30, what="the redriven event handled")
        dead = await read_topic(stack.kafka_bootstrap, dlq)
        assert len(dead) == 6
        again = [r for r in dead if REDRIVEN_FROM_HEADER in dict(r.headers)]
        assert len(again) == 2
        assert all(r.value == POISON for r in again)

        # A second run redrives only what was dead-lettered since the first (the poison again),
        # not the four dead letters the first run already handled.
        second = await redrive(stack.kafka_bootstrap, dlq, group=f"{topic}-redrive")
        assert (second.redriven, second.duplicates) == (1, 1)
        again_positions = {f"{r.topic}[{r.partition}]@{r.offset}" for r in again}
        assert {position for position, _ in second.republished} <= again_positions
        await wait_until(lambda: both_dead_lettered(4), timeout=30, what="still poison")
        assert sorted(seen_a) == sorted(seen_b) == ["good after", "good before", NEEDS_THE_FIX]


async def test_redrive_of_an_empty_dead_letter_topic_does_nothing(stack: Stack, topic: str) -> None:
    await create_topic(stack.kafka_bootstrap, f"{topic}.dlq")
    report = await redrive(stack.kafka_bootstrap, f"{topic}.dlq", group=f"{topic}-redrive")
    assert (report.redriven, report.duplicates, report.without_source) == (0, 0, 0)


async def test_the_command_line_prints_what_it_did(stack: Stack, topic: str) -> None:
    dlq = f"{topic}.dlq"
    await create_topic(stack.kafka_bootstrap, dlq)
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
        "--bootstrap", stack.kafka_bootstrap, "--dlq-topic", dlq, "--group", f"{topic}-redrive",
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert f"redriven {dlq}[2]@0 -> {topic}[4]@0" in text
    assert "reason=<root>: Invalid JSON" in text
    assert f"skipped {dlq}[1]@0: no usable dlq-source-topic header" in text
    assert text.rstrip().endswith("redriven 1, skipped 0 duplicate(s) and 1 without a source")
    records = await read_topic(stack.kafka_bootstrap, topic)
    assert [(r.partition, r.key, r.value) for r in records] == [(4, b"k", b"v")]
    # Nothing left to redrive for this group.
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert "redriven 0, skipped 0 duplicate(s) and 0 without a source" in out.decode()

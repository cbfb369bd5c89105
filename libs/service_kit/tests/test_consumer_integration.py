"""The batch consumer against a real Kafka broker: commit after effect, retries, DLQ, groups."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from blog_events import Envelope
from blog_testkit import (
    BLOG_DECODER,
    BlogHistory,
    Stack,
    as_record,
    running_batch_consumer,
    wait_until,
)
from blog_testkit.plugin import create_dead_letter_topics
from service_kit.consumer import BatchConsumer, ConsumedEvent, ConsumerConfig, ConsumerMetrics
from service_kit.topics import dead_letter_topic

pytestmark = pytest.mark.integration

PARTITIONS = 6


def published_event(blog_id: uuid.UUID | None = None) -> tuple[bytes, bytes]:
    """(key, value) of a valid BlogPublished event."""
    return as_record(BlogHistory().publish(blog_id=blog_id))


@pytest.fixture
async def producer(stack: Stack) -> AsyncIterator[AIOKafkaProducer]:
    # A plain producer: it can write anything, including bytes no consumer can parse.
    kafka_producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await kafka_producer.start()
    yield kafka_producer
    await kafka_producer.stop()


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await client.start()
    yield client
    await client.close()


def config_for(stack: Stack, topic: str, **overrides: object) -> ConsumerConfig:
    values: dict[str, object] = {
        "bootstrap_servers": stack.kafka_bootstrap,
        "topic": topic,
        "group_id": f"{topic}-group",
        "dlq_topic": dead_letter_topic(topic, f"{topic}-group"),
        "retry_initial_s": 0.05,
        "retry_max_s": 0.2,
    }
    values.update(overrides)
    return ConsumerConfig(**values)  # type: ignore[arg-type]


async def committed(admin: AIOKafkaAdminClient, group: str) -> dict[int, int]:
    offsets = await admin.list_consumer_group_offsets(group)
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def test_batch_is_handled_then_committed(
    stack: Stack, topic: str, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient
) -> None:
    config = config_for(stack, topic)
    handled: list[ConsumedEvent[Envelope]] = []
    committed_when_handled: list[dict[int, int]] = []

    async def handler(events: Sequence[ConsumedEvent[Envelope]]) -> None:
        committed_when_handled.append(await committed(admin, config.group_id))
        handled.extend(events)

    sent = [published_event() for _ in range(3)]
    for key, value in sent:
        await producer.send_and_wait(topic, value=value, key=key, partition=2)

    consumer = BatchConsumer(
        config, handler, ConsumerMetrics(CollectorRegistry()), decoder=BLOG_DECODER
    )
    assert not consumer.healthy
    async with running_batch_consumer(consumer):
        await wait_until(
            lambda: asyncio.sleep(0, len(handled) == 3), timeout=30, what="3 events handled"
        )
        assert consumer.healthy
        await wait_until(
            lambda: _equals(committed(admin, config.group_id), {2: 3}),
            timeout=30,
            what="offset 3 committed on partition 2",
        )
    assert not consumer.healthy
    # Nothing was committed before the handler had run.
    assert committed_when_handled[0] == {}
    assert [e.offset for e in handled] == [0, 1, 2]
    assert [e.partition for e in handled] == [2, 2, 2]
    assert [e.envelope.key.encode() for e in handled] == [key for key, _ in sent]


async def test_stop_right_after_a_batch_waits_for_its_commit(
    stack: Stack, topic: str, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient
) -> None:
    """A batch's commit is answered while the next batch is handled; stop() (like a revoke)
    waits for the commit in flight, so the next owner does not get the batch again."""
    config = config_for(stack, topic)
    handled = asyncio.Event()
    seen: list[int] = []

    async def handler(events: Sequence[ConsumedEvent[Envelope]]) -> None:
        seen.extend(e.offset for e in events)
        if len(seen) == 4:
            handled.set()

    for _ in range(4):
        key, value = published_event()
        await producer.send_and_wait(topic, value=value, key=key, partition=3)
    consumer = BatchConsumer(
        config, handler, ConsumerMetrics(CollectorRegistry()), decoder=BLOG_DECODER
    )
    async with running_batch_consumer(consumer):
        await asyncio.wait_for(handled.wait(), timeout=30)
        # Stop at once: the commit was only just sent (or not yet answered).
    assert await committed(admin, config.group_id) == {3: 4}


async def test_failing_handler_gets_the_batch_again_and_only_then_commits(
    stack: Stack, topic: str, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient
) -> None:
    config = config_for(stack, topic, retry_initial_s=0.05)
    calls: list[list[int]] = []
    health_seen: list[bool] = []
    committed_seen: list[dict[int, int]] = []
    consumer: BatchConsumer[Envelope]

    async def handler(events: Sequence[ConsumedEvent[Envelope]]) -> None:
        calls.append([e.offset for e in events])
        health_seen.append(consumer.healthy)
        committed_seen.append(await committed(admin, config.group_id))
        if len(calls) <= 2:
            raise ConnectionRefusedError("database is down")  # transient: the batch is retried

    for _ in range(4):
        key, value = published_event()
        await producer.send_and_wait(topic, value=value, key=key, partition=0)

    registry = CollectorRegistry()
    consumer = BatchConsumer(config, handler, ConsumerMetrics(registry), decoder=BLOG_DECODER)
    async with running_batch_consumer(consumer):
        await wait_until(
            lambda: _equals(committed(admin, config.group_id), {0: 4}),
            timeout=30,
            what="offset 4 committed after the retries",
        )
        assert consumer.healthy
    assert calls == [[0, 1, 2, 3]] * 3
    assert health_seen == [True, False, False]
    assert committed_seen == [{}, {}, {}]
    failed = registry.get_sample_value(
        "blog_consumer_events_failed_total", {"group": config.group_id}
    )
    processed = registry.get_sample_value(
        "blog_consumer_events_processed_total", {"group": config.group_id}
    )
    assert (failed, processed) == (8.0, 4.0)


async def test_stop_interrupts_the_backoff_and_commits_nothing(
    stack: Stack, topic: str, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient
) -> None:
    config = config_for(stack, topic, retry_initial_s=60.0, retry_max_s=60.0)
    calls = 0

    async def handler(events: Sequence[ConsumedEvent[Envelope]]) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError("always failing")

    key, value = published_event()
    await producer.send_and_wait(topic, value=value, key=key)
    consumer = BatchConsumer(
        config, handler, ConsumerMetrics(CollectorRegistry()), decoder=BLOG_DECODER
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    await wait_until(lambda: asyncio.sleep(0, calls >= 1), timeout=30, what="first failure")
    # A jittered 0..60 s backoff is running; stop() must cut it short.
    await asyncio.wait_for(consumer.stop(), 5)
    await asyncio.wait_for(task, 5)
    assert await committed(admin, config.group_id) == {}


async def test_malformed_record_goes_to_dlq_and_good_ones_around_it_are_handled(
    stack: Stack, topic: str, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient
) -> None:
    config = config_for(stack, topic)
    await create_dead_letter_topics(stack.kafka_bootstrap, topic, [config.group_id])
    handled: list[ConsumedEvent[Envelope]] = []

    async def handler(events: Sequence[ConsumedEvent[Envelope]]) -> None:
        handled.extend(events)

    good_before, good_after = published_event(), published_event()
    await producer.send_and_wait(topic, value=good_before[1], key=good_before[0], partition=0)
    await producer.send_and_wait(
        topic,
        value=b'{"not": "an event"}',
        key=b"bad-key",
        partition=0,
        headers=[("trace-id", b"t-1")],
    )
    await producer.send_and_wait(topic, value=good_after[1], key=good_after[0], partition=0)
    # A partition with nothing decodable must be committed too, or it would be re-read forever.
    await producer.send_and_wait(topic, value=b"\xff\x00 garbage", key=None, partition=5)

    registry = CollectorRegistry()
    consumer = BatchConsumer(config, handler, ConsumerMetrics(registry), decoder=BLOG_DECODER)
    async with running_batch_consumer(consumer):
        await wait_until(
            lambda: _equals(committed(admin, config.group_id), {0: 3, 5: 1}),
            timeout=30,
            what="partitions 0 and 5 committed",
        )
    assert [(e.partition, e.offset) for e in handled] == [(0, 0), (0, 2)]

    dead = await read_all(stack, config.dlq_topic, expected=2)
    by_source = {(r.headers_dict["dlq-source-partition"], r.record.value): r for r in dead}
    bad = by_source[(b"0", b'{"not": "an event"}')]
    assert bad.record.key == b"bad-key"
    assert bad.headers_dict["dlq-source-topic"] == topic.encode()
    assert bad.headers_dict["dlq-source-offset"] == b"1"
    assert bad.headers_dict["dlq-group"] == config.group_id.encode()
    assert bad.headers_dict["trace-id"] == b"t-1"
    assert b"event_id" in bad.headers_dict["dlq-reason"]
    assert bad.headers_dict["dlq-failed-at"].startswith(b"20")
    garbage = by_source[(b"5", b"\xff\x00 garbage")]
    assert garbage.headers_dict["dlq-reason"]
    assert garbage.record.key is None
    assert (
        registry.get_sample_value(
            "blog_consumer_events_dead_lettered_total", {"group": config.group_id}
        )
        == 2.0
    )


async def test_a_record_failing_in_the_handler_is_isolated_and_dead_lettered_once(
    stack: Stack, topic: str, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient
) -> None:
    """A handler that fails for one blog only: that record goes to the DLQ once, with the
    exception as its reason; every other record, of its partition and of the others, is
    handled, and all partitions are committed."""
    config = config_for(stack, topic)
    await create_dead_letter_topics(stack.kafka_bootstrap, topic, [config.group_id])
    poison_blog = uuid.uuid4()
    applied: list[tuple[int, int]] = []
    poison_tries = 0

    async def handler(events: Sequence[ConsumedEvent[Envelope]]) -> None:
        nonlocal poison_tries
        if any(e.envelope.payload.blog_id == poison_blog for e in events):
            poison_tries += len(events) == 1
            raise ValueError(f"blog {poison_blog} cannot be applied")
        applied.extend((e.partition, e.offset) for e in events)

    sent: list[tuple[int, int]] = []
    for partition in (0, 3):
        for n in range(5):
            key, value = published_event(poison_blog if (partition, n) == (3, 2) else None)
            meta = await producer.send_and_wait(topic, value=value, key=key, partition=partition)
            sent.append((meta.partition, meta.offset))

    registry = CollectorRegistry()
    consumer = BatchConsumer(config, handler, ConsumerMetrics(registry), decoder=BLOG_DECODER)
    async with running_batch_consumer(consumer):
        await wait_until(
            lambda: _equals(committed(admin, config.group_id), {0: 5, 3: 5}),
            timeout=30,
            what="both partitions committed past the poison",
        )
        assert consumer.healthy
    assert sorted(applied) == [position for position in sent if position != (3, 2)]
    assert poison_tries == 3  # config.record_attempts
    dead = await read_all(stack, config.dlq_topic, expected=1)
    assert len(dead) == 1
    assert dead[0].headers_dict["dlq-source-partition"] == b"3"
    assert dead[0].headers_dict["dlq-source-offset"] == b"2"
    assert dead[0].headers_dict["dlq-reason"] == (
        f"ValueError: blog {poison_blog} cannot be applied".encode()
    )
    assert (
        registry.get_sample_value(
            "blog_consumer_events_dead_lettered_total", {"group": config.group_id}
        )
        == 1.0
    )
    isolations = registry.get_sample_value(
        "blog_consumer_isolations_total", {"group": config.group_id}
    )
    assert isolations is not None
    assert isolations >= 1.0


async def test_two_consumers_in_one_group_share_the_six_partitions(
    stack: Stack, topic: str, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient
) -> None:
    config = config_for(stack, topic)
    handled: dict[str, list[ConsumedEvent[Envelope]]] = {"a": [], "b": []}

    def handler_for(member: str):  # type: ignore[no-untyped-def]
        async def handler(events: Sequence[ConsumedEvent[Envelope]]) -> None:
            handled[member].extend(events)

        return handler

    metrics = ConsumerMetrics(CollectorRegistry())
    member_a = BatchConsumer(config, handler_for("a"), metrics, decoder=BLOG_DECODER)
    member_b = BatchConsumer(config, handler_for("b"), metrics, decoder=BLOG_DECODER)
    per_partition = 5
    async with running_batch_consumer(member_a), running_batch_consumer(member_b):
        await wait_until(
            lambda: asyncio.sleep(
                0,
                len(member_a.assignment) == 3
                and len(member_b.assignment) == 3
                and not (member_a.assignment & member_b.assignment),
            ),
            timeout=60,
            what="3 + 3 partitions assigned",
        )
        for partition in range(PARTITIONS):
            for _ in range(per_partition):
                key, value = published_event()
                await producer.send_and_wait(topic, value=value, key=key, partition=partition)
        expected = dict.fromkeys(range(PARTITIONS), per_partition)
        await wait_until(
            lambda: _equals(committed(admin, config.group_id), expected),
            timeout=60,
            what="all six partitions committed",
        )
        partitions_a = {tp.partition for tp in member_a.assignment}
        partitions_b = {tp.partition for tp in member_b.assignment}

    assert {e.partition for e in handled["a"]} == partitions_a
    assert {e.partition for e in handled["b"]} == partitions_b
    seen = sorted((e.partition, e.offset) for member in handled.values() for e in member)
    assert seen == [(p, o) for p in range(PARTITIONS) for o in range(per_partition)]


# -- helpers ------------------------------------------------------------------------------


async def _equals(value: object, expected: object) -> bool:
    assert asyncio.iscoroutine(value)
    return bool(await value == expected)


class DeadLetter:
    def __init__(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.record = record
        self.headers_dict = dict(record.headers)


async def read_all(stack: Stack, topic: str, expected: int) -> list[DeadLetter]:
    """Read every partition of `topic` from the beginning until `expected` records arrived."""
    reader = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        reader.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        await reader.seek_to_beginning()
        records: list[DeadLetter] = []

        async def got_all() -> bool:
            batches = await reader.getmany(timeout_ms=200)
            records.extend(DeadLetter(r) for batch in batches.values() for r in batch)
            return len(records) >= expected

        await wait_until(got_all, timeout=30, what=f"{expected} records on {topic}")
        return records
    finally:
        await reader.stop()


CRASHING_CONSUMER = """
import asyncio, sys
from blog_testkit import BLOG_DECODER
from blog_testkit.faults import crash_after_batches
from service_kit.consumer import BatchConsumer, ConsumerConfig

async def handler(events):
    print(f"effect {len(events)}", flush=True)

async def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    config = ConsumerConfig(bootstrap, topic, f"{topic}-group", f"{topic}.{topic}-group.dlq")
    crashing = crash_after_batches(1)(handler)
    await BatchConsumer(config, crashing, decoder=BLOG_DECODER).run()

asyncio.run(main())
"""


async def test_crash_after_effect_exits_137_before_the_commit(
    stack: Stack, topic: str, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient
) -> None:
    for _ in range(2):
        key, value = published_event()
        await producer.send_and_wait(topic, value=value, key=key, partition=1)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_CONSUMER,
        stack.kafka_bootstrap,
        topic,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 137, output.decode()
    assert b"effect 2" in output
    assert await committed(admin, f"{topic}-group") == {}

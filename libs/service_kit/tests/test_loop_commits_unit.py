"""The loop's commit ordering, with a scripted Kafka consumer whose commits answer only when the
test says so: batch N's commit is answered while batch N+1 is handled, commits are sent one at a
time in order, and stop() or a revoke waits for the commit in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from prometheus_client import CollectorRegistry

from blog_testkit import BLOG_DECODER, BlogHistory, as_record, wait_until
from service_kit.consumer import BatchConsumer, ConsumedEvent, ConsumerConfig, ConsumerMetrics
from service_kit.consumer import loop as loop_module

TOPIC = "blogs"
TP = TopicPartition(TOPIC, 0)


def record(offset: int) -> ConsumerRecord[bytes, bytes]:
    key, value = as_record(BlogHistory().publish())
    return ConsumerRecord(TOPIC, 0, offset, 0, 0, key, value, None, len(key), len(value), [])


class ScriptedConsumer:
    """Hands out one batch of one record per poll; every commit waits for `answer()`."""

    def __init__(self, batches: int) -> None:
        self.batches = [[record(offset)] for offset in range(batches)]
        self.sent: list[int] = []  # committed offsets, in the order the commits were sent
        self.answered: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._answers: asyncio.Queue[None] = asyncio.Queue()
        self.listener: Any = None

    def answer(self) -> None:
        self._answers.put_nowait(None)

    async def start(self) -> None:
        pass

    def subscribe(self, topics: Sequence[str], listener: Any) -> None:
        self.listener = listener

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if self.batches:
            return {TP: self.batches.pop(0)}
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.sent.append(offsets[TP].offset)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self._answers.get()
        finally:
            self.in_flight -= 1
        self.answered.append(offsets[TP].offset)

    async def stop(self) -> None:
        pass


class NoDeadLetters:
    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


@pytest.fixture
def kafka(monkeypatch: pytest.MonkeyPatch) -> ScriptedConsumer:
    scripted = ScriptedConsumer(batches=3)
    monkeypatch.setattr(loop_module, "AIOKafkaConsumer", lambda **_: scripted)
    monkeypatch.setattr(loop_module, "DeadLetterWriter", NoDeadLetters)
    return scripted


async def until(condition: Callable[[], bool], what: str) -> None:
    await wait_until(lambda: asyncio.sleep(0, condition()), timeout=5, what=what, interval=0.001)


def consumer_with(handler: Any) -> BatchConsumer[Any]:
    config = ConsumerConfig("unused:9092", TOPIC, "group", "blogs.group.dlq", poll_timeout_ms=10)
    return BatchConsumer(
        config, handler, ConsumerMetrics(CollectorRegistry()), decoder=BLOG_DECODER
    )


async def test_a_commit_is_answered_while_the_next_batch_is_handled_and_commits_stay_in_order(
    kafka: ScriptedConsumer,
) -> None:
    handled: list[int] = []

    async def handler(events: Sequence[ConsumedEvent[Any]]) -> None:
        handled.extend(e.offset for e in events)

    consumer = consumer_with(handler)
    run = asyncio.create_task(consumer.run())
    # Batch 0's commit is not answered, yet batch 1 is handled meanwhile...
    await until(lambda: handled == [0, 1], "batch 1 handled while commit 1 is in flight")
    assert kafka.sent == [1]
    # ...and batch 1's commit is not sent before batch 0's is answered (a window to look in).
    await asyncio.sleep(0.05)
    assert kafka.sent == [1]
    assert handled == [0, 1]
    kafka.answer()
    await until(lambda: kafka.sent == [1, 2], "commit 2 sent after commit 1 was answered")
    kafka.answer()
    await until(lambda: handled == [0, 1, 2] and kafka.sent == [1, 2, 3], "batch 2")
    kafka.answer()
    await until(lambda: kafka.answered == [1, 2, 3], "every commit answered")
    assert kafka.most_in_flight == 1
    await consumer.stop()
    await run


async def one_commit_in_flight(
    kafka: ScriptedConsumer,
) -> tuple[BatchConsumer[Any], asyncio.Task[None]]:
    """A running consumer that handled one batch and whose commit is sent, not yet answered."""
    kafka.batches = kafka.batches[:1]

    async def handler(events: Sequence[ConsumedEvent[Any]]) -> None:
        pass

    consumer = consumer_with(handler)
    run = asyncio.create_task(consumer.run())
    await until(lambda: kafka.sent == [1], "commit sent")
    return consumer, run


async def test_stop_waits_for_the_commit_in_flight(kafka: ScriptedConsumer) -> None:
    consumer, run = await one_commit_in_flight(kafka)
    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done(), "stop() returned with the batch's commit unanswered"
    kafka.answer()
    await asyncio.wait_for(stopping, 5)
    await run
    assert kafka.answered == [1]


async def test_a_revoke_waits_for_the_commit_in_flight(kafka: ScriptedConsumer) -> None:
    consumer, run = await one_commit_in_flight(kafka)
    revoking = asyncio.create_task(kafka.listener.on_partitions_revoked({TP}))
    await asyncio.sleep(0.05)
    assert not revoking.done(), "the partition was given up with its commit unanswered"
    kafka.answer()
    await asyncio.wait_for(revoking, 5)
    assert kafka.answered == [1]
    await consumer.stop()
    await run


class PartlyRevokedConsumer(ScriptedConsumer):
    """One poll reads partitions 0 and 1; by the time the batch is handled, only partition 0 is
    still assigned (a rebalance in between). Commits are answered at once."""

    def __init__(self) -> None:
        super().__init__(batches=0)
        self.committed: list[dict[TopicPartition, OffsetAndMetadata]] = []
        self._polled = False

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if self._polled:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self._polled = True
        key, value = as_record(BlogHistory().publish())
        moved = ConsumerRecord(TOPIC, 1, 7, 0, 0, key, value, None, len(key), len(value), [])
        return {TP: [record(3)], TopicPartition(TOPIC, 1): [moved]}

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.committed.append(offsets)


async def test_records_of_a_partition_no_longer_owned_are_neither_handled_nor_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scripted = PartlyRevokedConsumer()
    monkeypatch.setattr(loop_module, "AIOKafkaConsumer", lambda **_: scripted)
    monkeypatch.setattr(loop_module, "DeadLetterWriter", NoDeadLetters)
    handled: list[tuple[int, int]] = []

    async def handler(events: Sequence[ConsumedEvent[Any]]) -> None:
        handled.extend((e.partition, e.offset) for e in events)

    consumer = consumer_with(handler)
    run = asyncio.create_task(consumer.run())
    await until(lambda: bool(scripted.committed), "the batch's commit")
    await consumer.stop()
    await run
    assert handled == [(0, 3)]
    assert scripted.committed[0] == {TP: OffsetAndMetadata(4, "")}

"""Shutdown edge cases, with a scripted Kafka consumer: a cancellation of one of aiokafka's own
tasks reaching the loop through its close() does not fail the service's shutdown, a stop during
the clients' start closes them, and a cancellation of the shutdown itself still goes through
(closing the dead-letter producer on the way)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from prometheus_client import CollectorRegistry

from blog_testkit import BLOG_DECODER, wait_until
from service_kit import background as background_module
from service_kit.background import BackgroundConsumer
from service_kit.consumer import BatchConsumer, ConsumedEvent, ConsumerConfig, ConsumerMetrics
from service_kit.consumer import loop as loop_module

TOPIC = "blogs"


class ClosingConsumer:
    """No records. Its stop() awaits a task of its own, as aiokafka's close() awaits its
    coordination task; `start_gate`, when set, holds start() until it is opened."""

    def __init__(self) -> None:
        self.start_gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.stops = 0
        self.internal: asyncio.Task[None] | None = None
        self.stop_entered = asyncio.Event()
        # aiokafka's close waiting on a broker that never answers the leave: only a
        # cancellation ends it.
        self.close_hangs = True

    async def start(self) -> None:
        self.started.set()
        if self.start_gate is not None:
            await self.start_gate.wait()

    def subscribe(self, topics: Sequence[str], listener: Any) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return set()

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        pass

    async def stop(self) -> None:
        self.stops += 1
        self.internal = asyncio.create_task(_idle() if self.close_hangs else asyncio.sleep(0))
        self.stop_entered.set()
        await self.internal


async def _idle() -> None:
    await asyncio.Event().wait()


class CountedDeadLetters:
    stops = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        CountedDeadLetters.stops += 1


@pytest.fixture
def kafka(monkeypatch: pytest.MonkeyPatch) -> ClosingConsumer:
    scripted = ClosingConsumer()
    CountedDeadLetters.stops = 0
    monkeypatch.setattr(loop_module, "AIOKafkaConsumer", lambda **_: scripted)
    monkeypatch.setattr(loop_module, "DeadLetterWriter", CountedDeadLetters)

    async def topics_present(*args: object, on_change: Any, **kwargs: object) -> None:
        on_change(None)

    monkeypatch.setattr(background_module, "wait_for_topics", topics_present)
    return scripted


def background_consumer() -> BackgroundConsumer[Any]:
    async def handler(events: Sequence[ConsumedEvent[Any]]) -> None:
        pass

    config = ConsumerConfig("unused:9092", TOPIC, "group", "blogs.group.dlq", poll_timeout_ms=10)
    consumer = BatchConsumer(
        config, handler, ConsumerMetrics(CollectorRegistry()), decoder=BLOG_DECODER
    )
    return BackgroundConsumer(consumer)


async def test_an_aiokafka_task_cancelled_during_close_does_not_fail_the_shutdown(
    kafka: ClosingConsumer,
) -> None:
    background = background_consumer()
    await wait_until(
        lambda: asyncio.sleep(0, background.consumer.loop_started), timeout=5, what="polling"
    )
    stopping = asyncio.create_task(background.stop(timeout_s=5))
    await asyncio.wait_for(kafka.stop_entered.wait(), 5)
    assert kafka.internal is not None
    kafka.internal.cancel()  # not a cancellation of the consumer task nor of the shutdown

    await asyncio.wait_for(stopping, 5)  # returns: no CancelledError into the lifespan
    assert background.task.done()
    assert not background.task.cancelled()
    assert CountedDeadLetters.stops == 1, "the dead-letter producer was left open"
    assert background.died is None


async def test_a_stop_during_the_clients_start_closes_them(kafka: ClosingConsumer) -> None:
    kafka.start_gate = asyncio.Event()  # start() hangs, as on a slow bootstrap
    kafka.close_hangs = False
    background = background_consumer()
    await asyncio.wait_for(kafka.started.wait(), 5)
    assert background.waiting_for is None  # topics present: not "waiting", yet not polling

    await asyncio.wait_for(background.stop(timeout_s=5), 5)
    assert background.task.done()
    assert kafka.stops == 1, "the consumer the start opened was never closed"
    assert CountedDeadLetters.stops == 1, "the dead-letter producer the start opened is open"


async def test_a_cancellation_of_the_consumer_task_still_cancels_it_and_closes_the_producer(
    kafka: ClosingConsumer,
) -> None:
    background = background_consumer()
    consumer = background.consumer
    await wait_until(lambda: asyncio.sleep(0, consumer.loop_started), timeout=5, what="polling")
    stopping = asyncio.create_task(consumer.stop())
    await asyncio.wait_for(kafka.stop_entered.wait(), 5)  # aiokafka's close hangs
    background.task.cancel()  # what BackgroundConsumer.stop does after its timeout

    await asyncio.wait({background.task}, timeout=5)
    assert background.task.cancelled(), "a cancellation of the task itself was swallowed"
    assert CountedDeadLetters.stops == 1, "the dead-letter producer was left open"
    await asyncio.wait_for(stopping, 5)

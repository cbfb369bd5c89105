"""Settling a batch without a broker: transient failures retried whole, record-level failures
isolated (partition, then halves, or the events a handler names), bounded retries, then one dead
letter each; the rest applied. The handler, the dead-letter writer and the pauses are fakes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, NotEnoughReplicasError, RecordTooLargeError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from prometheus_client import CollectorRegistry

from service_kit.consumer import (
    ConsumedEvent,
    ConsumerMetrics,
    RejectedEvents,
    RetryPolicy,
    is_transient_by_default,
    settled_prefix_offsets,
    split,
    transient_errors,
)
from service_kit.consumer.isolation import BatchSettler, Position, Settlement

GROUP = "g"


def event(partition: int, offset: int, key: str = "") -> ConsumedEvent[str]:
    return ConsumedEvent(
        envelope=key or f"p{partition}o{offset}",
        topic="t",
        partition=partition,
        offset=offset,
        timestamp_ms=0,
        key=(key or f"p{partition}o{offset}").encode(),
    )


class Poisoned(Exception):
    pass


class FakeHandler:
    """Applies events (records what it applied, in order) unless `fail(batch)` raises."""

    def __init__(self, fail: Callable[[Sequence[ConsumedEvent[str]]], None]) -> None:
        self.fail = fail
        self.calls: list[list[str]] = []
        self.applied: list[str] = []

    async def __call__(self, batch: Sequence[ConsumedEvent[str]]) -> None:
        self.calls.append([e.envelope for e in batch])
        self.fail(batch)
        self.applied.extend(e.envelope for e in batch)


def poison_keys(*keys: str) -> Callable[[Sequence[ConsumedEvent[str]]], None]:
    def fail(batch: Sequence[ConsumedEvent[str]]) -> None:
        for e in batch:
            if e.envelope in keys:
                raise Poisoned(f"cannot apply {e.envelope}")

    return fail


class Harness:
    def __init__(
        self,
        handler: FakeHandler,
        *,
        record_attempts: int = 3,
        streak_limit: int = 100,
        interrupt_at_pause: int | None = None,
        dead_letter_failures: int = 0,
    ) -> None:
        self.handler = handler
        self.pauses: list[float] = []
        self.dead_letters: list[tuple[Position, str]] = []
        self._interrupt_at = interrupt_at_pause
        self._dead_letter_failures = dead_letter_failures
        self.registry = CollectorRegistry()
        self.settler: BatchSettler[str] = BatchSettler(
            GROUP,
            handler,
            transient_errors(ConnectionAbortedError),
            RetryPolicy(0.2, 10.0, record_attempts, streak_limit),
            ConsumerMetrics(self.registry),
            self.pause,
        )

    async def pause(self, delay: float) -> bool:
        self.pauses.append(delay)
        return self._interrupt_at is not None and len(self.pauses) >= self._interrupt_at

    async def dead_letter(self, position: Position, reason: str) -> None:
        if self._dead_letter_failures:
            self._dead_letter_failures -= 1
            raise KafkaConnectionError("broker away")
        self.dead_letters.append((position, reason))

    async def settle(self, events: list[ConsumedEvent[str]]) -> Settlement[str]:
        return await self.settler.settle(events, [], self.dead_letter)

    def metric(self, name: str) -> float | None:
        return self.registry.get_sample_value(name, {"group": GROUP})


async def test_a_good_batch_is_handled_once() -> None:
    h = Harness(FakeHandler(poison_keys()))
    events = [event(0, n) for n in range(4)]
    settlement = await h.settle(events)
    assert settlement.completed
    assert settlement.applied == 4
    assert settlement.isolation_s is None
    assert h.handler.calls == [["p0o0", "p0o1", "p0o2", "p0o3"]]
    assert h.dead_letters == []
    assert h.pauses == []


async def test_one_poison_is_isolated_retried_then_dead_lettered_and_the_rest_applied() -> None:
    h = Harness(FakeHandler(poison_keys("p1o2")))
    events = [event(0, 0), event(1, 0), event(0, 1), event(1, 1), event(1, 2), event(1, 3)]
    settlement = await h.settle(events)

    assert settlement.completed
    assert sorted(h.handler.applied) == sorted(
        e.envelope for e in events if e.offset != 2 or e.partition != 1
    )
    assert h.dead_letters == [(("t", 1, 2), "Poisoned: cannot apply p1o2")]
    assert settlement.dead_lettered == h.dead_letters
    assert settlement.settled == {("t", e.partition, e.offset) for e in events}
    # Whole batch, then per partition (partition 0 alone succeeds), then halves of partition 1,
    # then the poison alone three times in all.
    assert h.handler.calls[:3] == [
        [e.envelope for e in events],
        ["p0o0", "p0o1"],
        ["p1o0", "p1o1", "p1o2", "p1o3"],
    ]
    assert h.handler.calls.count(["p1o2"]) == 3
    # Bounded: two pauses between the three tries alone, within the backoff ceilings.
    assert len(h.pauses) == 2
    assert h.pauses[0] <= 0.2
    assert h.pauses[1] <= 0.4
    # Each partition's events were applied in offset order.
    applied_1 = [k for k in h.handler.applied if k.startswith("p1")]
    assert applied_1 == ["p1o0", "p1o1", "p1o3"]
    assert settlement.isolation_s is not None
    assert h.metric("blog_consumer_isolations_total") == 1
    assert h.metric("blog_consumer_events_dead_lettered_total") == 1


async def test_a_poison_that_heals_on_retry_is_applied_not_dead_lettered() -> None:
    tries = 0

    def flaky(batch: Sequence[ConsumedEvent[str]]) -> None:
        nonlocal tries
        if any(e.envelope == "p0o1" for e in batch):
            tries += 1
            if tries < 3:
                raise Poisoned("not yet")

    h = Harness(FakeHandler(flaky))
    settlement = await h.settle([event(0, 0), event(0, 1)])
    assert settlement.completed
    assert settlement.applied == 2
    assert h.dead_letters == []


async def test_transient_failures_retry_the_whole_batch_without_splitting() -> None:
    failures = 5

    def outage(batch: Sequence[ConsumedEvent[str]]) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionRefusedError("database down")

    h = Harness(FakeHandler(outage))
    events = [event(p, 0) for p in range(3)]
    assert h.settler.failing is False
    settlement = await h.settle(events)
    assert settlement.completed
    assert settlement.applied == 3
    assert h.handler.calls == [["p0o0", "p1o0", "p2o0"]] * 6
    assert len(h.pauses) == 5
    assert all(0 <= d <= 10.0 for d in h.pauses)
    assert h.dead_letters == []
    assert not h.settler.failing
    assert h.metric("blog_consumer_isolations_total") is None


async def test_a_transient_failure_while_isolating_is_retried_without_limit() -> None:
    outage = 4

    def fail(batch: Sequence[ConsumedEvent[str]]) -> None:
        nonlocal outage
        if len(batch) == 1 and outage:
            outage -= 1
            raise ConnectionAbortedError("connection lost")  # the service's own transient type
        poison_keys("p0o1")(batch)

    h = Harness(FakeHandler(fail))
    settlement = await h.settle([event(0, 0), event(0, 1)])
    assert settlement.completed
    assert h.dead_letters == [(("t", 0, 1), "Poisoned: cannot apply p0o1")]
    assert h.handler.applied == ["p0o0"]


async def test_rejected_events_are_the_only_ones_retried() -> None:
    batch = [event(0, n) for n in range(5)]

    def reject(events: Sequence[ConsumedEvent[str]]) -> None:
        bad = [(e, f"document {e.envelope} refused") for e in events if e.offset in (1, 3)]
        if bad:
            raise RejectedEvents(bad)

    h = Harness(FakeHandler(reject))
    settlement = await h.settle(batch)
    assert settlement.completed
    assert settlement.applied == 3
    assert h.handler.calls[0] == [e.envelope for e in batch]
    assert set(map(tuple, h.handler.calls[1:])) == {("p0o1",), ("p0o3",)}
    assert h.dead_letters == [
        (("t", 0, 1), "document p0o1 refused"),
        (("t", 0, 3), "document p0o3 refused"),
    ]


async def test_stop_while_isolating_leaves_what_is_settled_and_reports_it() -> None:
    h = Harness(FakeHandler(poison_keys("p0o2")), interrupt_at_pause=1)
    events = [event(0, n) for n in range(4)]
    settlement = await h.settle(events)
    assert not settlement.completed
    assert h.dead_letters == []
    # Halves: [0, 1] applied; [2, 3] -> [2] failed alone, then the stop cut its retry short.
    assert settlement.settled == {("t", 0, 0), ("t", 0, 1)}


async def test_too_many_poisons_in_a_row_are_treated_as_systemic() -> None:
    broken = True

    def fail(batch: Sequence[ConsumedEvent[str]]) -> None:
        if broken:
            raise Poisoned("column does not exist")

    h = Harness(FakeHandler(fail), record_attempts=1, streak_limit=2)
    original_pause = h.pause

    async def heal_after_a_while(delay: float) -> bool:
        nonlocal broken
        if len(h.pauses) >= 4:
            broken = False
        return await original_pause(delay)

    h.settler._pause = heal_after_a_while
    settlement = await h.settle([event(0, n) for n in range(3)])
    assert settlement.completed
    # Two dead letters, then the third record waited for the fix instead.
    assert [position for position, _ in h.dead_letters] == [("t", 0, 0), ("t", 0, 1)]
    assert h.handler.applied == ["p0o2"]


async def test_a_failing_dead_letter_write_is_retried_until_durable() -> None:
    h = Harness(FakeHandler(poison_keys("p0o0")), record_attempts=1, dead_letter_failures=2)
    settlement = await h.settle([event(0, 0)])
    assert settlement.completed
    assert h.dead_letters == [(("t", 0, 0), "Poisoned: cannot apply p0o0")]
    assert len(h.pauses) == 2


async def test_undecodable_records_are_dead_lettered_with_their_reason() -> None:
    h = Harness(FakeHandler(poison_keys()))
    record = ConsumerRecord(
        topic="t", partition=3, offset=7, timestamp=0, timestamp_type=0, key=None, value=b"x",
        checksum=None, serialized_key_size=0, serialized_value_size=1, headers=(),
    )  # fmt: skip
    settlement = await h.settler.settle([event(3, 8)], [(record, "Invalid JSON")], h.dead_letter)
    assert h.dead_letters == [(("t", 3, 7), "Invalid JSON")]
    assert settlement.settled == {("t", 3, 7), ("t", 3, 8)}


def test_split_by_partition_first_then_in_halves() -> None:
    mixed = [event(0, 0), event(1, 0), event(0, 1)]
    assert [[e.envelope for e in part] for part in split(mixed)] == [["p0o0", "p0o1"], ["p1o0"]]
    one = [event(2, n) for n in range(5)]
    assert [[e.offset for e in part] for part in split(one)] == [[0, 1], [2, 3, 4]]


def _record(partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t", partition=partition, offset=offset, timestamp=0, timestamp_type=0, key=None,
        value=b"", checksum=None, serialized_key_size=0, serialized_value_size=0, headers=(),
    )  # fmt: skip


def test_settled_prefix_stops_at_the_first_unsettled_record_of_each_partition() -> None:
    records = [_record(0, 5), _record(0, 6), _record(0, 7), _record(1, 3), _record(2, 0)]
    settled = {("t", 0, 5), ("t", 0, 7), ("t", 2, 0)}
    assert settled_prefix_offsets(records, settled) == {
        TopicPartition("t", 0): OffsetAndMetadata(6, ""),
        TopicPartition("t", 2): OffsetAndMetadata(1, ""),
    }


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionRefusedError("refused"), True),
        (TimeoutError(), True),
        (KafkaConnectionError("no broker"), True),
        (NotEnoughReplicasError("isr"), True),  # Kafka calls it retriable
        (RecordTooLargeError("big"), False),
        (RuntimeError("bug"), False),
        (ValueError("bad value"), False),
    ],
)
def test_default_classification(exc: Exception, transient: bool) -> None:
    assert is_transient_by_default(exc) is transient


def test_services_add_their_own_transient_errors_and_causes_count() -> None:
    class Overloaded(Exception):
        status = 429

    is_transient = transient_errors(
        LookupError, when=lambda e: getattr(e, "status", 0) in (429, 503)
    )
    assert is_transient(KeyError("gone"))
    assert is_transient(Overloaded())
    assert not is_transient(ValueError("bad"))
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = ConnectionResetError("reset")
    assert is_transient(wrapped)

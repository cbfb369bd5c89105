"""Reading a topic from the beginning up to fixed offsets, outside any consumer group's
subscription: what `verify` (commits nothing, joins no group) and `rebuild` (its own group, whose
committed offsets make a killed rebuild resume) of a read model need.

The partitions are assigned by hand, so the reader never rebalances and knows exactly when it has
passed a target offset; a rebuild still commits under a group id of its own, which lagmon and
`kafka-consumer-groups` show like any group.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TextIO, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.protocol.admin import DeleteGroupsRequest
from aiokafka.structs import OffsetAndMetadata

from service_kit.consumer.records import Decoder, Record, decode_records
from service_kit.kafka_admin import NO_ERROR, admin_client
from service_kit.kafka_clients import client_options

Offsets = dict[int, int]  # partition -> offset


async def committed_offsets(bootstrap: str, group_id: str, topic: str) -> Offsets:
    """What `group_id` has committed on `topic` (partitions it never committed: absent)."""
    async with admin_client(bootstrap, client_id=f"{group_id}-offsets") as admin:
        committed = await admin.list_consumer_group_offsets(group_id)
    return {
        tp.partition: meta.offset
        for tp, meta in committed.items()
        if tp.topic == topic and meta.offset >= 0
    }


async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    async with admin_client(bootstrap) as admin:
        [described] = await admin.describe_topics([topic])
    if described["error_code"] != NO_ERROR:
        raise LookupError(f"topic {topic}: describe_topics error code {described['error_code']}")
    return sorted(p["partition"] for p in described["partitions"])


async def forget_group(bootstrap: str, group_id: str) -> str | None:
    """Delete a finished rebuild's group, so that lag monitoring does not see a stopped group
    falling behind forever. None when deleted, else why not (the caller only reports it)."""
    try:
        async with admin_client(bootstrap, client_id=f"{group_id}-cleanup") as admin:
            node = await admin.find_coordinator(group_id)
            # aiokafka's admin client has no delete_consumer_groups: its DeleteGroups request.
            response = await admin._send_request_to_node(node, DeleteGroupsRequest([group_id]))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    results = response.to_object()["results"]
    errors = [r["error_code"] for r in results if r["error_code"] != NO_ERROR]
    return f"error code {errors[0]}" if errors else None


T = TypeVar("T")


async def read_ahead(source: AsyncIterator[T], depth: int = 1) -> AsyncIterator[T]:
    """`source`'s items, the next `depth` of them produced (fetched, decoded, folded) while the
    caller works on the current one: the CPU of decoding overlaps the wait on the database."""
    queue: asyncio.Queue[tuple[bool, T | BaseException | None]] = asyncio.Queue(maxsize=depth)

    async def pump() -> None:
        try:
            async for item in source:
                await queue.put((True, item))
        except BaseException as exc:  # handed to the caller, raised there
            await queue.put((False, exc))
            return
        await queue.put((False, None))

    task = asyncio.create_task(pump())
    try:
        while True:
            more, item = await queue.get()
            if not more:
                if isinstance(item, BaseException):
                    raise item
                return
            yield item  # type: ignore[misc]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def remaining(positions: Mapping[int, int], until: Mapping[int, int]) -> int:
    """Offsets still to read before every partition reaches `until` (holes left by compaction
    included: an upper bound of records)."""
    return sum(max(0, end - positions.get(p, 0)) for p, end in until.items())


def passed(positions: Mapping[int, int], until: Mapping[int, int]) -> bool:
    return all(positions.get(p, 0) >= end for p, end in until.items())


class LogReader:
    """One topic, every partition assigned by hand; `group_id` only names where `commit` goes."""

    def __init__(self, bootstrap: str, topic: str, *, group_id: str | None = None) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        self.group_id = group_id
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Large fetches: a rebuild reads the whole log as fast as the handler takes it.
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
            **client_options(),
        )
        self.partitions: list[TopicPartition] = []

    async def __aenter__(self) -> LogReader:
        numbers = await topic_partitions(self.bootstrap, self.topic)
        await self._consumer.start()
        self.partitions = [TopicPartition(self.topic, p) for p in numbers]
        self._consumer.assign(self.partitions)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def end_offsets(self) -> Offsets:
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets(self.partitions)
        return {tp.partition: offset for tp, offset in ends.items()}

    async def seek(self, start: Mapping[int, int] | None) -> None:
        """Read from `start` (partitions it lacks, or all when None: from the beginning)."""
        start = start or {}
        fresh = [tp for tp in self.partitions if tp.partition not in start]
        if fresh:
            await self._consumer.seek_to_beginning(*fresh)
        for tp in self.partitions:
            if tp.partition in start:
                self._consumer.seek(tp, start[tp.partition])

    async def positions(self) -> Offsets:
        return {tp.partition: await self._consumer.position(tp) for tp in self.partitions}

    async def batches(
        self, until: Mapping[int, int], *, max_records: int = 2000
    ) -> AsyncIterator[list[Record]]:
        """Batches of the records before `until`, until every partition has passed it."""
        while not passed(await self.positions(), until):
            fetched = await self._consumer.getmany(timeout_ms=200, max_records=max_records)
            records: list[Record] = []
            for tp, partition_records in fetched.items():
                end = until.get(tp.partition, 0)
                records += [r for r in partition_records if r.offset < end]
                if partition_records and partition_records[-1].offset >= end:
                    # Fetched past the target: the next call must read those records again.
                    self._consumer.seek(tp, end)
            if records:
                yield records

    async def commit(self, positions: Mapping[int, int]) -> None:
        await self._consumer.commit(
            {TopicPartition(self.topic, p): OffsetAndMetadata(o, "") for p, o in positions.items()}
        )

    async def committed(self) -> Offsets:
        """What this reader's group has committed (empty without a group)."""
        if self.group_id is None:
            return {}
        found: Offsets = {}
        for tp in self.partitions:
            offset = await self._consumer.committed(tp)
            if offset is not None and offset >= 0:
                found[tp.partition] = offset
        return found


@dataclass
class Progress:
    """A one-line progress report on stderr (refreshed in place on a terminal, a line every few
    seconds otherwise): offsets done of total, rate, ETA, and the live group's lag beside it."""

    what: str
    total: int
    out: TextIO = field(default_factory=lambda: sys.stderr)
    started: float = field(default_factory=time.monotonic)
    _last: float = 0.0

    def show(self, done: int, *, live_lag: int | None = None, force: bool = False) -> None:
        now = time.monotonic()
        tty = self.out.isatty()
        if not force and now - self._last < (0.5 if tty else 5.0):
            return
        self._last = now
        self.out.write(
            ("\r" if tty else "") + self.line(done, now, live_lag) + ("" if tty else "\n")
        )
        self.out.flush()

    def line(self, done: int, now: float, live_lag: int | None) -> str:
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        total = max(self.total, done, 1)
        width = 24
        filled = int(width * done / total)
        eta = (total - done) / rate if rate > 0 else float("inf")
        eta_text = "--:--" if eta == float("inf") else f"{int(eta // 60):d}:{int(eta % 60):02d}"
        lag = "" if live_lag is None else f"  live group lag {live_lag:,}"
        return (
            f"{self.what} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} "
            f"{rate:,.0f}/s ETA {eta_text}{lag}"
        )

    def finish(self, done: int, *, live_lag: int | None = None) -> None:
        self.show(done, live_lag=live_lag, force=True)
        if self.out.isatty():
            self.out.write("\n")


def offsets_text(offsets: Mapping[int, int]) -> str:
    return ",".join(f"{p}:{o}" for p, o in sorted(offsets.items()))


def as_json_offsets(offsets: Mapping[int, int]) -> dict[str, int]:
    return {str(p): o for p, o in sorted(offsets.items())}


def from_json_offsets(raw: Mapping[str, Any]) -> Offsets:
    return {int(p): int(o) for p, o in raw.items()}


# -- verify: fold the log, compare with a read model ------------------------------------------

K = TypeVar("K")
V = TypeVar("V")
S = TypeVar("S")
E = TypeVar("E")


@dataclass(frozen=True)
class Newest(Generic[V]):
    """A key's newest state in the log (highest version; the first read on a tie) and where."""

    version: int
    partition: int
    offset: int
    state: V


@dataclass(frozen=True)
class Difference:
    key: str
    expected: str
    found: str

    def line(self) -> str:
        return f"  {self.key}: expected {self.expected}; found {self.found}"


@dataclass
class Fold(Generic[K, V]):
    newest: dict[K, Newest[V]] = field(default_factory=dict)
    records: int = 0
    undecodable: int = 0

    def add(self, key: K, version: int, partition: int, offset: int, state: V) -> None:
        held = self.newest.get(key)
        if held is None or version > held.version:
            self.newest[key] = Newest(version, partition, offset, state)


def compare(
    expected: Mapping[K, Newest[V]],
    found: Mapping[K, tuple[int, V]],
    committed: Mapping[int, int],
    describe: Callable[[tuple[int, V] | None], str],
) -> tuple[list[Difference], set[K]]:
    """(differences, keys in flight); `describe` words a (version, state) or its absence.

    The log was read up to offsets taken AFTER the read model, so the model can hold no version
    the log lacks: a newer version found, or a key unknown to the log, is a difference. An older
    one found (or none) is in flight, not a difference, when the newest record of its key is at
    or past what the live group had committed before the model was read."""
    differences: list[Difference] = []
    in_flight: set[K] = set()
    for key in sorted({*expected, *found}, key=str):
        newest = expected.get(key)
        held = found.get(key)
        if newest is not None and held is not None and held == (newest.version, newest.state):
            continue
        behind = held is None or (newest is not None and held[0] < newest.version)
        if newest is not None and behind and newest.offset >= committed.get(newest.partition, 0):
            in_flight.add(key)
            continue
        differences.append(
            Difference(
                str(key),
                describe(None if newest is None else (newest.version, newest.state)),
                describe(held),
            )
        )
    return differences, in_flight


@dataclass
class Verification(Generic[K, V, S]):
    fold: Fold[K, V]
    snapshot: S  # the last read of the read model
    differences: list[Difference]
    in_flight: set[K]
    until: Offsets
    rounds: int


async def verify_against_log(
    *,
    bootstrap: str,
    topic: str,
    live_group: str,
    decoder: Decoder[E],
    entry: Callable[[E], tuple[K, int, V]],
    read_model: Callable[[], Awaitable[S]],
    found_of: Callable[[S], Mapping[K, tuple[int, V]]],
    describe: Callable[[tuple[int, V] | None], str],
    settle_timeout_s: float = 30.0,
) -> Verification[K, V, S]:
    """Fold `topic` from the beginning (no group, nothing committed) and compare it with the read
    model. Keys in flight (the live group has not committed their newest record yet) are read
    again, with the log read further, until none is left or `settle_timeout_s` has passed; what
    is still in flight then is reported as such, not as a difference."""
    fold: Fold[K, V] = Fold()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle_timeout_s
    rounds = 0
    async with LogReader(bootstrap, topic) as reader:
        await reader.seek(None)
        while True:
            rounds += 1
            committed = await committed_offsets(bootstrap, live_group, topic)
            snapshot = await read_model()
            until = await reader.end_offsets()  # after the model: the log holds all it holds
            async for records in reader.batches(until):
                events, undecodable = decode_records(records, decoder)
                fold.records += len(records)
                fold.undecodable += len(undecodable)
                for event in events:
                    key, version, state = entry(event.envelope)
                    fold.add(key, version, event.partition, event.offset, state)
            differences, in_flight = compare(fold.newest, found_of(snapshot), committed, describe)
            if not in_flight or loop.time() >= deadline:
                return Verification(fold, snapshot, differences, in_flight, until, rounds)
            await asyncio.sleep(0.5)  # let the live group commit what it applies

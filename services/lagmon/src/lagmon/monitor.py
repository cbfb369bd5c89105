"""The monitor's memory: the observation history of every (group, topic, partition), turned
into a snapshot with lag, lag in seconds and status at every sample. Pure (no I/O), so the
whole path from a raw sample to what the page, the CLI and /metrics show is unit-testable."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

from lagmon.kafka_reader import RawGroup, RawSample
from lagmon.rules import (
    GroupFacts,
    Observation,
    RuleConfig,
    Status,
    Verdict,
    group_status,
    not_found_reason,
    partition_status,
)


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed_offset: int | None
    log_start_offset: int
    log_end_offset: int
    lag: int
    lag_seconds: float | None  # None: lagging but the oldest unprocessed record was unreadable
    status: Status
    reason: str


@dataclass(frozen=True)
class GroupLag:
    group: str
    state: str
    members: int | None  # None: unknown (the sample failed)
    status: Status
    reason: str
    lag: int | None  # None: unknown (the sample failed)
    lag_seconds: float | None
    partitions: tuple[PartitionLag, ...]
    expected: bool = False
    error: str | None = None


@dataclass(frozen=True)
class LagSnapshot:
    at: float
    topics: tuple[str, ...]
    groups: tuple[GroupLag, ...]
    error: str | None = None  # the sample failed: every group is ERR with this reason
    last_success_at: float | None = None  # the latest sample that succeeded

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def group(self, name: str) -> GroupLag | None:
        return next((g for g in self.groups if g.group == name), None)


@dataclass(frozen=True)
class HistoryPoint:
    at: float
    lag: int | None
    lag_seconds: float | None
    status: Status


PartitionKey = tuple[str, str, int]  # group, topic, partition
K = TypeVar("K")
T = TypeVar("T", bound="_Timed")


class LagMonitor:
    def __init__(
        self,
        rules: RuleConfig,
        history_s: float,
        topics: tuple[str, ...],
        expected_groups: tuple[str, ...] = (),
    ) -> None:
        self.rules = rules
        self.topics = topics
        self.expected_groups = expected_groups
        # Partition observations must reach back over the whole window (WARN, REWIND).
        self._keep_s = max(history_s, 2 * rules.window_s)
        self._observations: defaultdict[PartitionKey, deque[Observation]] = defaultdict(deque)
        self._history: defaultdict[str, deque[HistoryPoint]] = defaultdict(deque)
        self._last_success_at: float | None = None
        self.latest: LagSnapshot | None = None

    def observe(self, sample: RawSample) -> LagSnapshot:
        now = sample.at
        groups = [self._observe_group(sample, raw) for raw in sorted(sample.groups, key=_name)]
        for group in groups:
            self._history[group.group].append(
                HistoryPoint(now, group.lag, group.lag_seconds, group.status)
            )
        self._forget_before(now - self._keep_s)
        self._last_success_at = now
        self.latest = LagSnapshot(now, self.topics, tuple(groups), None, now)
        return self.latest

    def _observe_group(self, sample: RawSample, raw: RawGroup) -> GroupLag:
        now = sample.at
        expected = raw.group in self.expected_groups
        facts = GroupFacts(
            expected=expected,
            committed_any=bool(raw.committed),
            state=raw.state,
            members=raw.members,
            error=raw.error,
        )
        not_found = raw.error is None and expected and not raw.committed
        # A group is watched on the topics it has committed on, all of their partitions; an
        # expected group that never committed, on every watched topic.
        group_topics = {topic for topic, _ in raw.committed}
        partitions = []
        for (topic, partition), (start, end) in sorted(sample.partitions.items()):
            if raw.error is None and not not_found and topic not in group_topics:
                continue
            committed = raw.committed.get((topic, partition))
            observation = Observation(now, committed, start, end, raw.state, raw.members, raw.error)
            history = self._observations[(raw.group, topic, partition)]
            history.append(observation)
            if not_found:
                verdict = Verdict(Status.NOTFOUND, not_found_reason(facts))
            else:
                verdict = partition_status(history, self.rules, now)
            partitions.append(
                PartitionLag(
                    topic=topic,
                    partition=partition,
                    committed_offset=committed,
                    log_start_offset=start,
                    log_end_offset=end,
                    lag=observation.lag,
                    lag_seconds=_lag_seconds(sample, observation, topic, partition),
                    status=verdict.status,
                    reason=verdict.reason,
                )
            )
        verdict = group_status(
            facts,
            [(f"{p.topic}[{p.partition}]", Verdict(p.status, p.reason)) for p in partitions],
        )
        known_seconds = [p.lag_seconds for p in partitions if p.lag_seconds is not None]
        return GroupLag(
            group=raw.group,
            state=raw.state,
            members=raw.members,
            status=verdict.status,
            reason=verdict.reason,
            lag=sum(p.lag for p in partitions),
            lag_seconds=max(known_seconds, default=None),
            partitions=tuple(partitions),
            expected=expected,
            error=raw.error,
        )

    def failed(self, at: float, error: str) -> LagSnapshot:
        """A sample that could not be taken at all: every group known (the latest snapshot's and
        the expected ones) is ERR with the reason; nothing is known of their lag or members."""
        known = [g.group for g in self.latest.groups] if self.latest else []
        names = sorted(set(known) | set(self.expected_groups))
        reason = f"sample failed: {error}"
        groups = tuple(
            GroupLag(
                group=name,
                state="Unknown",
                members=None,
                status=Status.ERR,
                reason=reason,
                lag=None,
                lag_seconds=None,
                partitions=(),
                expected=name in self.expected_groups,
                error=reason,
            )
            for name in names
        )
        for group in groups:
            self._history[group.group].append(HistoryPoint(at, None, None, Status.ERR))
        self._forget_before(at - self._keep_s)
        self.latest = LagSnapshot(at, self.topics, groups, error, self._last_success_at)
        return self.latest

    def history(self, since: float) -> dict[str, list[dict[str, Any]]]:
        return {
            group: [asdict(point) for point in points if point.at >= since]
            for group, points in sorted(self._history.items())
        }

    def _forget_before(self, cutoff: float) -> None:
        _trim(self._observations, cutoff)
        _trim(self._history, cutoff)


def _name(raw: RawGroup) -> str:
    return raw.group


class _Timed(Protocol):
    @property
    def at(self) -> float: ...


def _trim(store: MutableMapping[K, deque[T]], cutoff: float) -> None:
    for key in list(store):
        points = store[key]
        while points and points[0].at < cutoff:
            points.popleft()
        if not points:
            del store[key]


def _lag_seconds(
    sample: RawSample, observation: Observation, topic: str, partition: int
) -> float | None:
    """Age of the oldest record the group has not processed; 0 when caught up."""
    if observation.lag == 0:
        return 0.0
    position = observation.start if observation.committed is None else observation.committed
    record_time = sample.record_times.get((topic, partition, position))
    if record_time is None:
        return None
    return max(0.0, sample.at - record_time)

"""The monitor's memory: the observation history of every (group, topic, partition), turned
into a snapshot with lag, lag in seconds and status at every sample. Pure (no I/O), so the
whole path from a raw sample to what the page, the CLI and /metrics show is unit-testable."""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

from lagmon.kafka_reader import RawSample
from lagmon.rules import Observation, RuleConfig, Status, partition_status, worst


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
    members: int
    status: Status
    lag: int
    lag_seconds: float | None
    partitions: tuple[PartitionLag, ...]
    error: str | None = None


@dataclass(frozen=True)
class LagSnapshot:
    at: float
    topics: tuple[str, ...]
    groups: tuple[GroupLag, ...]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def group(self, name: str) -> GroupLag | None:
        return next((g for g in self.groups if g.group == name), None)


@dataclass(frozen=True)
class HistoryPoint:
    at: float
    lag: int
    lag_seconds: float | None
    status: Status


PartitionKey = tuple[str, str, int]  # group, topic, partition
K = TypeVar("K")
T = TypeVar("T", bound="_Timed")


class LagMonitor:
    def __init__(self, rules: RuleConfig, history_s: float, topics: tuple[str, ...]) -> None:
        self.rules = rules
        self.topics = topics
        # Partition observations must reach back further than the window, or STOP (unchanged
        # for a whole window) could never be seen.
        self._keep_s = max(history_s, 2 * rules.window_s)
        self._observations: defaultdict[PartitionKey, deque[Observation]] = defaultdict(deque)
        self._history: defaultdict[str, deque[HistoryPoint]] = defaultdict(deque)
        self.latest: LagSnapshot | None = None

    def observe(self, sample: RawSample) -> LagSnapshot:
        now = sample.at
        groups = []
        for raw in sorted(sample.groups, key=lambda g: g.group):
            partitions = []
            # A group is watched on the topics it has committed on, all of their partitions.
            group_topics = {topic for topic, _ in raw.committed}
            for (topic, partition), (start, end) in sorted(sample.partitions.items()):
                if raw.error is None and topic not in group_topics:
                    continue
                committed = raw.committed.get((topic, partition))
                observation = Observation(now, committed, start, end, raw.error)
                history = self._observations[(raw.group, topic, partition)]
                history.append(observation)
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
            known_seconds = [p.lag_seconds for p in partitions if p.lag_seconds is not None]
            lag_seconds = max(known_seconds, default=None)
            group = GroupLag(
                group=raw.group,
                state=raw.state,
                members=raw.members,
                status=Status.ERR if raw.error else worst(p.status for p in partitions),
                lag=sum(p.lag for p in partitions),
                lag_seconds=lag_seconds,
                partitions=tuple(partitions),
                error=raw.error,
            )
            groups.append(group)
            self._history[raw.group].append(
                HistoryPoint(now, group.lag, group.lag_seconds, group.status)
            )
        self._forget_before(now - self._keep_s)
        self.latest = LagSnapshot(now, self.topics, tuple(groups))
        return self.latest

    def failed(self, at: float, error: str) -> LagSnapshot:
        """A sample that could not be taken at all: keep the last groups, flag the snapshot."""
        groups = self.latest.groups if self.latest else ()
        self.latest = LagSnapshot(at, self.topics, groups, error)
        return self.latest

    def history(self, since: float) -> dict[str, list[dict[str, Any]]]:
        return {
            group: [asdict(point) for point in points if point.at >= since]
            for group, points in sorted(self._history.items())
        }

    def _forget_before(self, cutoff: float) -> None:
        _trim(self._observations, cutoff)
        _trim(self._history, cutoff)


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

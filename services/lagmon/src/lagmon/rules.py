"""The status of a consumer group, as pure functions over observations (the table and the
comparison with Burrow's evaluator are in services/lagmon/README.md).

An observation is one sample of one (group, topic, partition): when it was taken, the group's
committed offset, the partition's log-start and log-end offsets, and what Kafka says of the group
(state and members). For a partition, on its latest observation, the first rule that matches wins:

1. ERR     the sample failed for this group, or the committed offset is beyond the log end (the
           topic was recreated) or below the log start (retention deleted unprocessed records).
2. OK      lag == 0: caught up (whether or not consumers are running).
3. STOP    lag > 0 and the group has no members (state Empty or Dead) in the latest
           `stop_after_samples` observations: nobody consumes. Kafka's facts, not the monitor's
           memory, so a monitor restart does not reset it. Within that grace: WARN.
4. REWIND  within the window the committed offset moved backwards (a reset, or a consumer
           committing an old offset) and has not come back to where it was.
5. STALL   members present, committed offset unchanged with lag > 0 for `stall_after_s` (over at
           least `min_observations` observations): the consumers are there but do not progress.
6. WARN    over the window (at least `min_observations` observations) the lag was never 0, never
           decreased from one observation to the next, and ended higher: the group falls behind.
7. OK      otherwise (lag > 0 but steady or shrinking while the offset moves: working).

A group's status is NOTFOUND when it is expected (`LAGMON_EXPECTED_GROUPS`) and has no committed
offset on the watched topics; ERR when the sample failed or the group could not be read;
otherwise its worst partition's. Severity (the number in /metrics):
OK 0 < WARN 1 < REWIND 2 < STALL 3 < STOP 4 < NOTFOUND 5 < ERR 6.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    REWIND = "REWIND"
    STALL = "STALL"
    STOP = "STOP"
    NOTFOUND = "NOTFOUND"
    ERR = "ERR"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {status: code for code, status in enumerate(Status)}

# Kafka group states (classic protocol) in which the group has no member.
NO_MEMBER_STATES = frozenset({"Empty", "Dead"})


@dataclass(frozen=True)
class RuleConfig:
    window_s: float
    stall_after_s: float
    min_observations: int = 3
    # Consecutive samples showing "lag and no members" before STOP: a consumer restarting
    # (the group is Empty for a moment) is not a stopped group.
    stop_after_samples: int = 2


@dataclass(frozen=True)
class Observation:
    at: float  # unix time of the sample
    committed: int | None  # None: the group has no committed offset on this partition
    start: int  # log-start offset
    end: int  # log-end offset (high watermark)
    state: str = "Stable"  # the group's state, as DescribeGroups tells
    members: int = 1
    error: str | None = None

    @property
    def position(self) -> int:
        # Without a commit, a group (auto.offset.reset=earliest) reads from the log start.
        return self.start if self.committed is None else self.committed

    @property
    def lag(self) -> int:
        return max(0, self.end - self.position)

    @property
    def has_members(self) -> bool:
        return self.members > 0 and self.state not in NO_MEMBER_STATES


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str


def in_window(history: Sequence[Observation], now: float, window_s: float) -> list[Observation]:
    """The observations taken within the last `window_s` seconds, oldest first."""
    return [obs for obs in history if obs.at >= now - window_s]


def trailing(history: Sequence[Observation], keep: Callable[[Observation], bool]) -> int:
    """How many of the latest observations, counting back, all satisfy `keep`."""
    return sum(1 for _ in itertools.takewhile(keep, reversed(history)))


def memberless_run(history: Sequence[Observation]) -> list[Observation]:
    """The trailing observations in which the group had lag and no member (oldest first)."""
    count = trailing(history, lambda obs: obs.lag > 0 and not obs.has_members)
    return list(itertools.islice(history, len(history) - count, None))


def stuck_run(history: Sequence[Observation]) -> list[Observation]:
    """The trailing observations with members, the latest committed offset and lag > 0 (oldest
    first): how long consumers have been sitting on work without progress."""
    if not history:
        return []
    latest = history[-1].committed
    count = trailing(
        history, lambda obs: obs.committed == latest and obs.lag > 0 and obs.has_members
    )
    return list(itertools.islice(history, len(history) - count, None))


@dataclass(frozen=True)
class Rewind:
    at: float
    before: int
    after: int


def unrecovered_rewind(window: Sequence[Observation]) -> Rewind | None:
    """The latest backwards move of the group's position within `window`, if the position has
    not come back to where it was before that move."""
    for earlier, later in reversed(list(itertools.pairwise(window))):
        if later.position < earlier.position:
            if window[-1].position < earlier.position:
                return Rewind(later.at, earlier.position, later.position)
            return None
    return None


def lag_growing(window: Sequence[Observation]) -> bool:
    lags = [obs.lag for obs in window]
    # Any 0 in the window: the group caught up meanwhile, so it is keeping pace (as in Burrow).
    return (
        all(lag > 0 for lag in lags)
        and all(later >= earlier for earlier, later in itertools.pairwise(lags))
        and (lags[-1] > lags[0])
    )


def _group_facts(obs: Observation) -> str:
    return f"{_plural(obs.members, 'member')}, {obs.state}"


def partition_status(history: Sequence[Observation], config: RuleConfig, now: float) -> Verdict:
    """The status of one partition of one group, from its observations (oldest first)."""
    if not history:
        return Verdict(Status.ERR, "no observation")
    latest = history[-1]
    if latest.error is not None:
        return Verdict(Status.ERR, latest.error)
    if latest.committed is not None and latest.committed > latest.end:
        return Verdict(
            Status.ERR,
            f"committed offset {latest.committed} beyond the log end {latest.end}"
            " (topic recreated?)",
        )
    if latest.committed is not None and latest.committed < latest.start:
        return Verdict(
            Status.ERR,
            f"committed offset {latest.committed} below the log start {latest.start}:"
            " records deleted before being processed",
        )
    if latest.lag == 0:
        return Verdict(Status.OK, "caught up")
    memberless = memberless_run(history)
    if memberless:
        samples = len(memberless)
        facts = f"no consumer ({latest.state}) with lag {latest.lag}"
        if samples >= config.stop_after_samples:
            return Verdict(Status.STOP, f"{facts} for {samples} samples")
        return Verdict(
            Status.WARN,
            f"{facts}: STOP if none joins within {config.stop_after_samples} samples",
        )
    window = in_window(history, now, config.window_s)
    rewind = unrecovered_rewind(window)
    if rewind is not None:
        return Verdict(
            Status.REWIND,
            f"committed offset moved back from {rewind.before} to {rewind.after}"
            f" {now - rewind.at:.0f}s ago; now {latest.position}, lag {latest.lag}",
        )
    run = stuck_run(history)
    unchanged_for = latest.at - run[0].at
    if unchanged_for >= config.stall_after_s and len(run) >= config.min_observations:
        return Verdict(
            Status.STALL,
            f"offset {latest.position} not moving for {unchanged_for:.0f}s with lag"
            f" {latest.lag} ({_group_facts(latest)})",
        )
    if len(window) < config.min_observations:
        return Verdict(Status.OK, f"lag {latest.lag}; too few observations to judge yet")
    if lag_growing(window):
        return Verdict(
            Status.WARN, f"lag growing {window[0].lag} -> {latest.lag} over {len(window)} samples"
        )
    return Verdict(Status.OK, f"consuming, lag {latest.lag}")


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe status (OK for none)."""
    return max(statuses, key=lambda status: status.severity, default=Status.OK)


@dataclass(frozen=True)
class GroupFacts:
    """What one sample says of a group as a whole."""

    expected: bool  # listed in LAGMON_EXPECTED_GROUPS
    committed_any: bool  # has a committed offset on a watched topic
    state: str
    members: int
    error: str | None = None


def not_found_reason(facts: GroupFacts) -> str:
    if facts.members > 0:
        return (
            f"expected group has never committed on the watched topics"
            f" ({_plural(facts.members, 'member')}, {facts.state})"
        )
    return (
        "expected group has no committed offset on the watched topics (never started,"
        " offsets expired, or the topic was recreated)"
    )


def group_status(facts: GroupFacts, partitions: Sequence[tuple[str, Verdict]]) -> Verdict:
    """The group's verdict from its facts and its partitions' (label, verdict) pairs."""
    if facts.error is not None:
        return Verdict(Status.ERR, facts.error)
    if not facts.committed_any and facts.expected:
        return Verdict(Status.NOTFOUND, not_found_reason(facts))
    if not partitions:
        return Verdict(Status.OK, "no partition to watch")
    label, verdict = max(partitions, key=lambda item: item[1].status.severity)
    if verdict.status is Status.OK:
        return Verdict(Status.OK, "every partition OK")
    return Verdict(verdict.status, f"{label}: {verdict.reason}")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"

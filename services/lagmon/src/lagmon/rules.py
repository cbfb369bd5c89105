"""Burrow-style status of a consumer group, as pure functions over observations.

An observation is one sample of one (group, topic, partition): when it was taken, the group's
committed offset, the partition's log-start and log-end offsets, and the lag in messages.
The rules for a partition, evaluated on its latest observation, first match wins:

1. ERR   the sample failed for this group, or the committed offset is beyond the log end (the
         topic was recreated) or below the log start (retention deleted records the group never
         processed).
2. OK    lag == 0: caught up (whether or not consumers are running).
3. STOP  the committed offset has not changed, with lag > 0, for at least `window_s`: nobody
         has committed progress for a whole window (typically: every consumer is dead).
4. STALL the same for at least `stall_after_s`, over at least `min_observations` observations:
         consumers may be there, but they do not progress.
5. WARN  over the window's observations (at least `min_observations`) the lag was never 0, never
         decreased from one observation to the next, and ended higher than it started: the group
         falls behind.

"Unchanged with lag > 0 for X seconds" is measured from the oldest observation of the trailing
run that has the latest committed offset *and* lag > 0: an idle, caught-up group that gets one
new record is not STOP at once, its clock starts when the record arrives.
6. OK    otherwise (lag > 0 but shrinking or steady while the offset moves: it is working).

Kafka does not tell when a group last committed, only what; so "no commit" means "the committed
offset did not change", as seen by the monitor (after a monitor restart the clock starts again).
A committed offset that moves backwards (a reset for a replay) is a change like any other.
A group's status is the worst status of its partitions (OK < WARN < STALL < STOP < ERR).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    STALL = "STALL"
    STOP = "STOP"
    ERR = "ERR"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Status.OK: 0, Status.WARN: 1, Status.STALL: 2, Status.STOP: 3, Status.ERR: 4}


@dataclass(frozen=True)
class RuleConfig:
    window_s: float
    stall_after_s: float
    min_observations: int = 3


@dataclass(frozen=True)
class Observation:
    at: float  # unix time of the sample
    committed: int | None  # None: the group has no committed offset on this partition
    start: int  # log-start offset
    end: int  # log-end offset (high watermark)
    error: str | None = None

    @property
    def lag(self) -> int:
        # Without a commit, a group (auto.offset.reset=earliest) has everything retained to read.
        position = self.start if self.committed is None else self.committed
        return max(0, self.end - position)


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str


def in_window(history: Sequence[Observation], now: float, window_s: float) -> list[Observation]:
    """The observations taken within the last `window_s` seconds, oldest first."""
    return [obs for obs in history if obs.at >= now - window_s]


def stuck_run(history: Sequence[Observation]) -> list[Observation]:
    """The trailing observations that share the latest committed offset and all have lag > 0
    (oldest first): how long the group has been sitting on work without progress."""
    if not history:
        return []
    latest = history[-1].committed
    run_start = len(history)
    while (
        run_start > 0
        and history[run_start - 1].committed == latest
        and history[run_start - 1].lag > 0
    ):
        run_start -= 1
    return list(itertools.islice(history, run_start, None))


def lag_growing(window: Sequence[Observation]) -> bool:
    lags = [obs.lag for obs in window]
    # Any 0 in the window: the group caught up meanwhile, so it is keeping pace (as in Burrow).
    return (
        all(lag > 0 for lag in lags)
        and all(later >= earlier for earlier, later in itertools.pairwise(lags))
        and (lags[-1] > lags[0])
    )


def partition_status(history: Sequence[Observation], config: RuleConfig, now: float) -> Verdict:
    """The status of one partition of one group, from its observations (oldest first; the
    history may reach further back than the window, which is how STOP is recognised)."""
    if not history:
        return Verdict(Status.ERR, "no observation")
    latest = history[-1]
    if latest.error is not None:
        return Verdict(Status.ERR, latest.error)
    if latest.committed is not None and latest.committed > latest.end:
        return Verdict(Status.ERR, "committed offset beyond the log end")
    if latest.committed is not None and latest.committed < latest.start:
        return Verdict(Status.ERR, "committed offset below the log start: records lost")
    if latest.lag == 0:
        return Verdict(Status.OK, "caught up")
    run = stuck_run(history)
    unchanged_for = latest.at - run[0].at
    if unchanged_for >= config.window_s:
        return Verdict(Status.STOP, f"no commit for {unchanged_for:.0f}s with lag {latest.lag}")
    if unchanged_for >= config.stall_after_s and len(run) >= config.min_observations:
        return Verdict(
            Status.STALL, f"offset not moving for {unchanged_for:.0f}s with lag {latest.lag}"
        )
    window = in_window(history, now, config.window_s)
    if len(window) < config.min_observations:
        return Verdict(Status.OK, f"lag {latest.lag}; too few observations to judge yet")
    if lag_growing(window):
        return Verdict(Status.WARN, f"lag growing {window[0].lag} -> {latest.lag}")
    return Verdict(Status.OK, "consuming")


def worst(statuses: Iterable[Status]) -> Status:
    """The group's status: its worst partition's (OK for a group with no partitions)."""
    return max(statuses, key=lambda status: status.severity, default=Status.OK)

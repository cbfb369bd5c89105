"""The status rules over windows of observations (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from lagmon.rules import (
    Observation,
    RuleConfig,
    Status,
    in_window,
    lag_growing,
    partition_status,
    stuck_run,
    worst,
)

CONFIG = RuleConfig(window_s=120, stall_after_s=30, min_observations=3)
STEP = 5.0  # seconds between observations


def series(
    committed: Sequence[int | None], ends: Sequence[int], *, start: int = 0, t0: float = 1000.0
) -> list[Observation]:
    assert len(committed) == len(ends)
    return [
        Observation(at=t0 + i * STEP, committed=c, start=start, end=e)
        for i, (c, e) in enumerate(zip(committed, ends, strict=True))
    ]


def status_of(history: list[Observation], config: RuleConfig = CONFIG) -> Status:
    return partition_status(history, config, now=history[-1].at).status


def test_lag_is_end_minus_committed_and_never_negative() -> None:
    assert Observation(0, committed=40, start=0, end=100).lag == 60
    assert Observation(0, committed=100, start=0, end=100).lag == 0
    assert Observation(0, committed=120, start=0, end=100).lag == 0


def test_lag_without_a_commit_counts_from_the_log_start() -> None:
    assert Observation(0, committed=None, start=30, end=100).lag == 70


def test_caught_up_is_ok_even_when_the_offset_never_moves() -> None:
    # A caught-up group with dead consumers and an idle topic is fine: nothing to do.
    history = series([50] * 60, [50] * 60)
    assert status_of(history) is Status.OK


def test_progressing_consumer_with_steady_lag_is_ok() -> None:
    history = series([10, 20, 30, 40, 50], [60, 70, 80, 90, 100])
    assert status_of(history) is Status.OK


def test_progressing_consumer_with_shrinking_lag_is_ok() -> None:
    history = series([10, 30, 50, 70, 90], [100, 100, 100, 100, 100])
    assert status_of(history) is Status.OK


def test_lag_growing_while_committing_is_warn() -> None:
    history = series([10, 12, 14, 16], [20, 30, 40, 50])
    verdict = partition_status(history, CONFIG, now=history[-1].at)
    assert verdict.status is Status.WARN
    assert "10 -> 34" in verdict.reason


def test_lag_that_dips_once_in_the_window_is_not_warn() -> None:
    history = series([10, 12, 30, 32], [20, 30, 40, 50])  # lags 10, 18, 10, 18
    assert status_of(history) is Status.OK


def test_flat_lag_is_not_growing() -> None:
    assert not lag_growing(series([10, 20, 30], [20, 30, 40]))
    assert lag_growing(series([10, 20, 30], [20, 30, 41]))


def test_growth_outside_the_window_does_not_count() -> None:
    # Lag grew long ago, then stayed flat while the group kept committing: OK now.
    grew = series([0, 1, 2, 3], [10, 20, 30, 40], t0=0)
    flat = series([100, 110, 120, 130], [140, 150, 160, 170], t0=1000)
    assert status_of(grew + flat) is Status.OK


def test_too_few_observations_is_ok_with_a_reason() -> None:
    history = series([10, 12], [20, 40])
    verdict = partition_status(history, CONFIG, now=history[-1].at)
    assert verdict.status is Status.OK
    assert "too few observations" in verdict.reason


def test_offset_not_moving_with_lag_is_stall_after_stall_after_s() -> None:
    # 7 observations 5 s apart: unchanged for 30 s.
    history = series([10] * 7, [20] * 7)
    verdict = partition_status(history, CONFIG, now=history[-1].at)
    assert verdict.status is Status.STALL
    assert "30s" in verdict.reason


def test_offset_not_moving_with_lag_shorter_than_stall_after_s_is_not_stall() -> None:
    history = series([10] * 6, [20] * 6)  # unchanged for 25 s, lag flat
    assert status_of(history) is Status.OK


def test_stall_needs_min_observations() -> None:
    config = RuleConfig(window_s=120, stall_after_s=5, min_observations=4)
    history = series([10] * 3, [20] * 3)  # 10 s unchanged but only 3 observations
    assert status_of(history, config) is Status.OK
    assert status_of(series([10] * 4, [20] * 4), config) is Status.STALL


def test_dead_consumers_with_growing_lag_go_warn_then_stall_then_stop() -> None:
    # The producer keeps writing, nobody commits.
    n = 30  # 145 s of observations
    history = series([10] * n, [20 + i for i in range(n)])
    statuses = [
        partition_status(history[: i + 1], CONFIG, now=history[i].at).status for i in range(n)
    ]
    assert statuses[:2] == [Status.OK, Status.OK]  # too few observations
    assert statuses[2] is Status.WARN  # lag growing, offset unchanged for 10 s
    assert statuses[6] is Status.STALL  # unchanged for 30 s
    assert statuses[24] is Status.STOP  # unchanged for 120 s = the window
    assert statuses[-1] is Status.STOP


def test_stop_when_no_commit_for_a_whole_window() -> None:
    history = series([10] * 25, [20] * 25)  # 120 s unchanged
    verdict = partition_status(history, CONFIG, now=history[-1].at)
    assert verdict.status is Status.STOP
    assert "120s" in verdict.reason


def test_stop_for_a_partition_the_group_never_committed() -> None:
    history = series([None] * 25, [20] * 25)
    assert status_of(history) is Status.STOP


def test_a_commit_restarts_the_clock() -> None:
    history = series([10] * 24 + [11], [20] * 25)
    assert status_of(history) is Status.OK  # moved just now, lag flat


def test_a_rewind_is_a_change_not_an_error() -> None:
    # A reset for a replay: the lag jumps (WARN by the growth rule), the move is no STALL/ERR.
    history = series([50, 50, 50, 0], [100] * 4)
    assert status_of(history) is Status.WARN
    assert [o.committed for o in stuck_run(history)] == [0]


def test_catching_up_after_a_stop_is_ok_at_once() -> None:
    history = series([10] * 25 + [20], [20] * 26)
    assert status_of(history) is Status.OK


def test_sample_error_is_err() -> None:
    history = [*series([10, 10], [20, 20]), Observation(1010, None, 0, 20, error="boom")]
    verdict = partition_status(history, CONFIG, now=1010)
    assert verdict == partition_status(history[-1:], CONFIG, now=1010)
    assert verdict.status is Status.ERR
    assert verdict.reason == "boom"


def test_committed_beyond_the_log_end_is_err() -> None:
    assert status_of([Observation(0, committed=200, start=0, end=100)]) is Status.ERR


def test_committed_below_the_log_start_is_err() -> None:
    verdict = partition_status([Observation(0, committed=5, start=10, end=100)], CONFIG, now=0)
    assert verdict.status is Status.ERR
    assert "records lost" in verdict.reason


def test_no_observation_is_err() -> None:
    assert partition_status([], CONFIG, now=0).status is Status.ERR


def test_err_beats_everything_and_ok_is_the_least() -> None:
    assert worst([Status.OK, Status.STOP, Status.ERR, Status.WARN]) is Status.ERR
    assert worst([Status.OK, Status.WARN, Status.STALL]) is Status.STALL
    assert worst([Status.STALL, Status.STOP]) is Status.STOP
    assert worst([]) is Status.OK


@pytest.mark.parametrize(
    ("status", "severity"),
    [(Status.OK, 0), (Status.WARN, 1), (Status.STALL, 2), (Status.STOP, 3), (Status.ERR, 4)],
)
def test_severity_codes_are_stable(status: Status, severity: int) -> None:
    # The Prometheus alert rules compare these numbers.
    assert status.severity == severity


def test_window_and_stuck_run() -> None:
    history = series([1, 1, 2, 2, 2], [9] * 5)
    assert [o.at for o in in_window(history, now=1020, window_s=10)] == [1010, 1015, 1020]
    assert [o.committed for o in stuck_run(history)] == [2, 2, 2]
    assert stuck_run([]) == []
    # Only the observations with lag > 0 count: the clock starts when work arrives.
    assert [o.end for o in stuck_run(series([2, 2, 2, 2], [2, 2, 3, 4]))] == [3, 4]


def test_idle_group_getting_new_records_is_not_stop_at_once() -> None:
    # Caught up and idle for 10 minutes, then one record arrives.
    history = series([7] * 120 + [7], [7] * 120 + [8])
    assert status_of(history) is Status.OK  # not STOP: the clock starts now
    history += series([7] * 7, [8] * 7, t0=history[-1].at + STEP)
    assert status_of(history) is Status.STALL


def test_a_zero_lag_in_the_window_prevents_warn() -> None:
    history = series([10, 10, 11, 12], [10, 11, 13, 15])  # lags 0, 1, 2, 3
    assert status_of(history) is Status.OK
    assert not lag_growing(history)
    assert lag_growing(history[1:])

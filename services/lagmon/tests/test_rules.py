"""The status rules over observations (pure functions), one block per rule of the table in
services/lagmon/README.md."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from lagmon.rules import (
    GroupFacts,
    Observation,
    RuleConfig,
    Status,
    Verdict,
    group_status,
    in_window,
    lag_growing,
    memberless_run,
    partition_status,
    stuck_run,
    unrecovered_rewind,
    worst,
)

CONFIG = RuleConfig(window_s=120, stall_after_s=30, min_observations=3, stop_after_samples=2)
STEP = 5.0  # seconds between observations


def series(
    committed: Sequence[int | None],
    ends: Sequence[int],
    *,
    start: int = 0,
    t0: float = 1000.0,
    state: str = "Stable",
    members: int = 1,
) -> list[Observation]:
    assert len(committed) == len(ends)
    return [
        Observation(t0 + i * STEP, c, start, e, state, members)
        for i, (c, e) in enumerate(zip(committed, ends, strict=True))
    ]


def gone(
    committed: Sequence[int | None], ends: Sequence[int], *, t0: float = 1000.0
) -> list[Observation]:
    """Observations of a group whose consumers are all gone (state Empty, no member)."""
    return series(committed, ends, t0=t0, state="Empty", members=0)


def verdict_of(history: list[Observation], config: RuleConfig = CONFIG) -> Verdict:
    return partition_status(history, config, now=history[-1].at)


def status_of(history: list[Observation], config: RuleConfig = CONFIG) -> Status:
    return verdict_of(history, config).status


# --- lag ---------------------------------------------------------------------------------------


def test_lag_is_end_minus_committed_and_never_negative() -> None:
    assert Observation(0, committed=40, start=0, end=100).lag == 60
    assert Observation(0, committed=100, start=0, end=100).lag == 0
    assert Observation(0, committed=120, start=0, end=100).lag == 0


def test_lag_without_a_commit_counts_from_the_log_start() -> None:
    assert Observation(0, committed=None, start=30, end=100).lag == 70


def test_members_come_from_kafka_state_and_count() -> None:
    assert Observation(0, 1, 0, 2, "Stable", 2).has_members
    assert Observation(0, 1, 0, 2, "PreparingRebalance", 1).has_members
    assert not Observation(0, 1, 0, 2, "Empty", 0).has_members
    assert not Observation(0, 1, 0, 2, "Dead", 0).has_members


# --- 1. ERR ------------------------------------------------------------------------------------


def test_sample_error_is_err_with_its_reason() -> None:
    history = [*series([10, 10], [20, 20]), Observation(1010, None, 0, 20, error="boom")]
    verdict = verdict_of(history)
    assert verdict == Verdict(Status.ERR, "boom")


def test_committed_beyond_the_log_end_is_err() -> None:
    verdict = verdict_of([Observation(0, committed=200, start=0, end=100)])
    assert verdict.status is Status.ERR
    assert "beyond the log end 100" in verdict.reason


def test_committed_below_the_log_start_is_err() -> None:
    verdict = verdict_of([Observation(0, committed=5, start=10, end=100)])
    assert verdict.status is Status.ERR
    assert "deleted before being processed" in verdict.reason


def test_no_observation_is_err() -> None:
    assert partition_status([], CONFIG, now=0).status is Status.ERR


# --- 2. OK: caught up --------------------------------------------------------------------------


def test_caught_up_is_ok_even_without_consumers_and_an_unmoving_offset() -> None:
    # A caught-up group with dead consumers and an idle topic is fine: nothing to do.
    assert verdict_of(gone([50] * 60, [50] * 60)) == Verdict(Status.OK, "caught up")
    assert status_of(series([50] * 60, [50] * 60)) is Status.OK


# --- 3. STOP: lag and no member, after the grace ------------------------------------------------


def test_no_member_with_lag_is_stop_on_the_second_sample() -> None:
    first, second = gone([10, 10], [20, 21])
    grace = verdict_of([first])
    assert grace.status is Status.WARN
    assert "STOP if none joins within 2 samples" in grace.reason
    verdict = verdict_of([first, second])
    assert verdict.status is Status.STOP
    assert verdict.reason == "no consumer (Empty) with lag 11 for 2 samples"


def test_stop_does_not_depend_on_how_long_the_monitor_has_watched() -> None:
    # A monitor that restarted knows two samples only; a group dead for 20 minutes is STOP
    # on the second, as it would be after hours of watching.
    assert status_of(gone([10] * 2, [20] * 2)) is Status.STOP
    assert status_of(gone([10] * 240, [20] * 240)) is Status.STOP


def test_stop_for_dead_group_and_a_partition_never_committed() -> None:
    dead = series([None, None], [20, 20], state="Dead", members=0)
    assert status_of(dead) is Status.STOP


def test_stop_goes_at_once_when_a_member_joins() -> None:
    history = gone([10] * 10, [20] * 10)
    history.append(Observation(history[-1].at + STEP, 10, 0, 20, "Stable", 1))
    assert status_of(history) is Status.OK  # joined just now, not yet judged stuck


def test_stop_needs_consecutive_memberless_samples() -> None:
    # Empty, then a member for one sample (a restart), then Empty again: the grace restarts.
    history = [
        *gone([10], [20]),
        *series([10], [20], t0=1005),
        *gone([10], [20], t0=1010),
    ]
    assert status_of(history) is Status.WARN
    assert len(memberless_run(history)) == 1


def test_grace_is_configurable() -> None:
    one = RuleConfig(window_s=120, stall_after_s=30, stop_after_samples=1)
    assert status_of(gone([10], [20]), one) is Status.STOP
    three = RuleConfig(window_s=120, stall_after_s=30, stop_after_samples=3)
    assert status_of(gone([10] * 2, [20] * 2), three) is Status.WARN
    assert status_of(gone([10] * 3, [20] * 3), three) is Status.STOP


# --- 4. REWIND ---------------------------------------------------------------------------------


def test_committed_offset_moving_back_is_rewind_until_it_is_back() -> None:
    history = series([50, 50, 10], [100] * 3)
    verdict = verdict_of(history)
    assert verdict.status is Status.REWIND
    assert "moved back from 50 to 10" in verdict.reason
    history += series([30], [100], t0=1015)
    assert status_of(history) is Status.REWIND  # 30 < 50: still replaying
    history += series([55], [100], t0=1020)
    assert status_of(history) is Status.OK  # beyond where it was: recovered


def test_rewind_older_than_the_window_is_forgotten() -> None:
    history = series([50, 10], [100, 100], t0=0) + series([20, 30, 40], [100] * 3, t0=500)
    assert unrecovered_rewind(in_window(history, now=510, window_s=120)) is None
    assert status_of(history) is Status.OK


def test_offsets_deleted_count_as_a_rewind_to_the_log_start() -> None:
    history = series([50, None], [100, 100], start=5)
    rewind = unrecovered_rewind(history)
    assert rewind is not None
    assert (rewind.before, rewind.after) == (50, 5)


def test_rewound_group_without_members_is_stop() -> None:
    # A reset is done on an Empty group: nobody consumes the replay, which is what matters.
    history = gone([50, 50, 10], [100] * 3)
    assert status_of(history) is Status.STOP


def test_caught_up_after_a_rewind_is_ok() -> None:
    assert status_of(series([50, 10, 100], [100] * 3)) is Status.OK


# --- 5. STALL ----------------------------------------------------------------------------------


def test_members_and_offset_not_moving_with_lag_is_stall_after_stall_after_s() -> None:
    history = series([10] * 7, [20] * 7)  # 7 observations 5 s apart: unchanged for 30 s
    verdict = verdict_of(history)
    assert verdict.status is Status.STALL
    assert verdict.reason == "offset 10 not moving for 30s with lag 10 (1 member, Stable)"


def test_stall_lasts_as_long_as_it_is_true() -> None:
    # Members present and stuck for 10 minutes: still STALL (never STOP), so an alert on STALL
    # with any `for:` can fire.
    assert status_of(series([10] * 121, [20] * 121)) is Status.STALL


def test_shorter_than_stall_after_s_is_not_stall() -> None:
    assert status_of(series([10] * 6, [20] * 6)) is Status.OK  # 25 s, lag flat


def test_stall_needs_min_observations() -> None:
    config = RuleConfig(window_s=120, stall_after_s=5, min_observations=4)
    assert status_of(series([10] * 3, [20] * 3), config) is Status.OK
    assert status_of(series([10] * 4, [20] * 4), config) is Status.STALL


def test_stall_clock_counts_only_samples_with_members() -> None:
    # Stopped for a long time, a consumer joined 10 s ago and has not committed yet: not STALL.
    history = gone([10] * 20, [20] * 20) + series([10] * 3, [20] * 3, t0=1100)
    assert [o.at for o in stuck_run(history)] == [1100, 1105, 1110]
    assert status_of(history) is Status.OK


def test_a_commit_restarts_the_clock() -> None:
    history = series([10] * 24 + [11], [20] * 25)
    assert status_of(history) is Status.OK  # moved just now, lag flat


def test_idle_group_getting_new_records_is_not_stall_at_once() -> None:
    # Caught up and idle for 10 minutes, then one record arrives.
    history = series([7] * 121, [7] * 120 + [8])
    assert status_of(history) is Status.OK  # the clock starts when the work arrives
    history += series([7] * 7, [8] * 7, t0=history[-1].at + STEP)
    assert status_of(history) is Status.STALL


# --- 6. WARN -----------------------------------------------------------------------------------


def test_lag_growing_while_committing_is_warn() -> None:
    history = series([10, 12, 14, 16], [20, 30, 40, 50])
    verdict = verdict_of(history)
    assert verdict.status is Status.WARN
    assert "10 -> 34" in verdict.reason


def test_lag_that_dips_once_in_the_window_is_not_warn() -> None:
    history = series([10, 12, 30, 32], [20, 30, 40, 50])  # lags 10, 18, 10, 18
    assert status_of(history) is Status.OK


def test_flat_lag_is_not_growing() -> None:
    assert not lag_growing(series([10, 20, 30], [20, 30, 40]))
    assert lag_growing(series([10, 20, 30], [20, 30, 41]))


def test_a_zero_lag_in_the_window_prevents_warn() -> None:
    history = series([10, 10, 11, 12], [10, 11, 13, 15])  # lags 0, 1, 2, 3
    assert status_of(history) is Status.OK
    assert not lag_growing(history)
    assert lag_growing(history[1:])


def test_growth_outside_the_window_does_not_count() -> None:
    grew = series([0, 1, 2, 3], [10, 20, 30, 40], t0=0)
    flat = series([100, 110, 120, 130], [140, 150, 160, 170], t0=1000)
    assert status_of(grew + flat) is Status.OK


def test_too_few_observations_is_ok_with_a_reason() -> None:
    verdict = verdict_of(series([10, 12], [20, 40]))
    assert verdict.status is Status.OK
    assert "too few observations" in verdict.reason


# --- 7. OK: working ----------------------------------------------------------------------------


def test_progressing_consumer_with_steady_or_shrinking_lag_is_ok() -> None:
    assert verdict_of(series([10, 20, 30, 40, 50], [60, 70, 80, 90, 100])) == Verdict(
        Status.OK, "consuming, lag 50"
    )
    assert status_of(series([10, 30, 50, 70, 90], [100] * 5)) is Status.OK


# --- the group ---------------------------------------------------------------------------------


def facts(**overrides: object) -> GroupFacts:
    values: dict[str, object] = {
        "expected": False, "committed_any": True, "state": "Stable", "members": 1,
    }  # fmt: skip
    values.update(overrides)
    return GroupFacts(**values)  # type: ignore[arg-type]


def test_expected_group_without_commits_is_notfound() -> None:
    verdict = group_status(facts(expected=True, committed_any=False, state="Dead", members=0), [])
    assert verdict.status is Status.NOTFOUND
    assert "offsets expired, or the topic was recreated" in verdict.reason
    running = group_status(facts(expected=True, committed_any=False, members=2), [])
    assert running.status is Status.NOTFOUND
    assert "never committed" in running.reason
    assert "2 members, Stable" in running.reason


def test_expected_group_with_commits_is_judged_by_its_partitions() -> None:
    partitions = [("t[0]", Verdict(Status.OK, "caught up"))]
    assert group_status(facts(expected=True), partitions).status is Status.OK


def test_group_error_is_err_whatever_its_partitions() -> None:
    verdict = group_status(facts(error="cannot fetch offsets: boom"), [])
    assert verdict == Verdict(Status.ERR, "cannot fetch offsets: boom")


def test_group_takes_its_worst_partition_and_names_it() -> None:
    partitions = [
        ("t[0]", Verdict(Status.OK, "caught up")),
        ("t[1]", Verdict(Status.STALL, "offset 3 not moving")),
        ("t[2]", Verdict(Status.REWIND, "moved back")),
    ]
    assert group_status(facts(), partitions) == Verdict(Status.STALL, "t[1]: offset 3 not moving")
    ok = [("t[0]", Verdict(Status.OK, "caught up"))]
    assert group_status(facts(), ok) == Verdict(Status.OK, "every partition OK")


def test_worst_and_severity_order() -> None:
    assert worst([Status.OK, Status.STOP, Status.ERR, Status.WARN]) is Status.ERR
    assert worst([Status.OK, Status.WARN, Status.STALL, Status.REWIND]) is Status.STALL
    assert worst([Status.STALL, Status.STOP]) is Status.STOP
    assert worst([]) is Status.OK


@pytest.mark.parametrize(
    ("status", "severity"),
    [
        (Status.OK, 0), (Status.WARN, 1), (Status.REWIND, 2), (Status.STALL, 3),
        (Status.STOP, 4), (Status.NOTFOUND, 5), (Status.ERR, 6),
    ],
)  # fmt: skip
def test_severity_codes_are_stable(status: Status, severity: int) -> None:
    # The Prometheus alert rules and the dashboard compare these numbers.
    assert status.severity == severity


def test_window_helpers() -> None:
    history = series([1, 1, 2, 2, 2], [9] * 5)
    assert [o.at for o in in_window(history, now=1020, window_s=10)] == [1010, 1015, 1020]
    assert [o.committed for o in stuck_run(history)] == [2, 2, 2]
    assert stuck_run([]) == []
    # Only the observations with lag > 0 count: the clock starts when work arrives.
    assert [o.end for o in stuck_run(series([2, 2, 2, 2], [2, 2, 3, 4]))] == [3, 4]

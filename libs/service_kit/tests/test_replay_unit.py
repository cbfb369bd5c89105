"""The pure parts of `service_kit.replay`: folding to the newest version per key, telling a
difference from a record still in flight, and the progress line."""

from __future__ import annotations

import io

from service_kit.replay import Fold, Progress, compare, passed, remaining


def describe(found: tuple[int, str] | None) -> str:
    return "absent" if found is None else f"v{found[0]} {found[1]}"


def test_the_fold_keeps_the_highest_version_whatever_the_order() -> None:
    fold: Fold[str, str] = Fold()
    fold.add("a", 2, 0, 5, "two")
    fold.add("a", 1, 3, 9, "one")  # an older version on another partition, read later
    fold.add("a", 2, 0, 7, "duplicate")  # same version: the first read stays
    assert fold.newest["a"].version == 2
    assert fold.newest["a"].state == "two"


def test_compare_tells_differences_from_records_in_flight() -> None:
    fold: Fold[str, str] = Fold()
    fold.add("same", 1, 0, 0, "x")
    fold.add("stale", 3, 0, 1, "new")  # committed by the live group (offset 1 < 5): a difference
    fold.add("pending", 2, 1, 8, "new")  # not committed yet (8 >= 5): in flight
    fold.add("missing", 1, 1, 2, "x")  # committed but absent: a difference
    found = {
        "same": (1, "x"),
        "stale": (2, "old"),
        "pending": (1, "old"),
        "ahead": (4, "?"),  # unknown to the log: a difference
    }
    differences, in_flight = compare(fold.newest, found, {0: 5, 1: 5}, describe)
    assert in_flight == {"pending"}
    assert [(d.key, d.expected, d.found) for d in differences] == [
        ("ahead", "absent", "v4 ?"),
        ("missing", "v1 x", "absent"),
        ("stale", "v3 new", "v2 old"),
    ]


def test_a_newer_version_in_the_model_than_in_the_log_is_a_difference_even_uncommitted() -> None:
    fold: Fold[str, str] = Fold()
    fold.add("k", 1, 0, 9, "x")
    differences, in_flight = compare(fold.newest, {"k": (2, "x")}, {0: 0}, describe)
    assert not in_flight
    assert [d.line() for d in differences] == ["  k: expected v1 x; found v2 x"]


def test_remaining_and_passed() -> None:
    assert remaining({0: 5, 1: 0}, {0: 10, 1: 3}) == 8
    assert not passed({0: 10, 1: 2}, {0: 10, 1: 3})
    assert passed({0: 11, 1: 3}, {0: 10, 1: 3})


def test_the_progress_line() -> None:
    progress = Progress("rebuild blogs-v2", 1000, out=io.StringIO(), started=0.0)
    line = progress.line(250, 10.0, live_lag=7)
    assert line == (
        "rebuild blogs-v2 [######..................] 250/1,000 25/s ETA 0:30  live group lag 7"
    )

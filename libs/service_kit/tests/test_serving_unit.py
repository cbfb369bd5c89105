"""The collector settings every service process runs with (`tune_gc`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service_kit.serving import GEN0_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_freezes_the_start_up_heap_and_collects_the_young_generation_less_often(
    restored_gc: None,
) -> None:
    _, gen1, gen2 = gc.get_threshold()
    built_at_start_up = [object()]  # a container alive before tune_gc, like the app
    tune_gc()
    assert gc.get_freeze_count() > len(built_at_start_up)
    assert gc.get_threshold() == (GEN0_THRESHOLD, gen1, gen2)
    # Cycles made afterwards are still found and freed.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1

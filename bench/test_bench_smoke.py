"""`make bench SIZE=small` in CI: every command of the bench runs and produces its figure. The
figures themselves are not checked here (a shared CI runner says nothing about speed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_small_bench_produces_every_figure(tmp_path: Path) -> None:
    if "BLOG_KAFKA_BOOTSTRAP" not in os.environ:
        pytest.fail(
            "the bench needs the real stack: run `make up` and load .state/stack.env", pytrace=False
        )
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--size", "small", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads(out.read_text())
    rows = {row["measure"]: row for row in results["table"]}
    expected = [
        "POST throughput, c=8",
        "POST p50, c=8",
        "POST p99, c=8",
        "counter drain (vs bare aiokafka loop)",
        "indexer drain (vs raw async_bulk)",
        "202 -> counted p99",
        "202 -> searchable p99",
        "RSS publisher (end of runs 2-4)",
        "RSS counter (end of runs 2-4)",
        "RSS indexer (end of runs 2-4)",
        "CPU per accepted POST, c=8",
        "POST p99 at a steady 20/s, consumers draining",
        "ES +200 ms: baseline POST p99 (vs ES at full speed)",
        "ES +200 ms: publisher POST p99 (vs ES at full speed)",
        "counter CPU per 1,000 events (vs bare loop)",
        "indexer CPU per 1,000 events",
    ]
    for measure in expected:
        assert measure in rows, f"{measure} missing from {sorted(rows)}"
        ours = rows[measure]["ours"]
        assert ours is not None, rows[measure]
        assert not math.isnan(ours), rows[measure]
        assert ours > 0, rows[measure]
    for measure in expected[:5]:
        reference = rows[measure]["reference"]
        assert reference is not None, rows[measure]
        assert reference > 0, rows[measure]
    # The drains must have done the work they were timed on, exactly once.
    drains = results["drains"]
    assert drains["counter"]["check"]["total_blogs"] == drains["backlog"]["live"]
    assert drains["indexer"]["check"]["live_documents"] == drains["backlog"]["live"]
    if "faststream" in drains:  # the peer runs where the bench group is installed
        assert drains["faststream"]["check"]["total_blogs"] == drains["backlog"]["live"]
    # The thesis: Elasticsearch slow, the publisher still answers every POST.
    assert results["slow_es"]["publisher"]["slow"]["errors"] == 0
    assert results["freshness"]["not_counted"] == 0
    assert results["freshness"]["not_searchable"] == 0
    assert "met?" in completed.stdout  # the table was printed

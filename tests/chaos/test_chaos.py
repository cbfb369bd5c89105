"""The chaos run at CI size (`make chaos N=...` runs it larger)."""

import pytest

from .chaos_run import chaos_run

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]


@pytest.mark.timeout(900)
async def test_chaos_keeps_every_accepted_write_exactly_once(stack: object) -> None:
    report = await chaos_run(writes=300, authors=20, concurrency=6, seed=20261128)
    print(f"chaos figures: {report}")  # visible with -s and in the CI log on failure
    assert report.requests_accepted > 0
    assert all(kills >= 1 for kills in report.kills.values()), report
    # On a cluster, every broker was killed -9 at least once as well.
    assert all(kills >= 1 for kills in report.broker_kills.values()), report
    assert report.kafka_restarts == 1
    assert report.duplicates == 0, report.problems
    assert report.missing == 0, report.problems

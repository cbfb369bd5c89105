"""running_batch_consumer without a broker: start, run in a task, stop and await on exit."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from blog_testkit import running_batch_consumer
from service_kit.consumer import BatchConsumer


class FakeConsumer:
    """Runs until stopped, like BatchConsumer.run(); records the calls it gets."""

    def __init__(self, stops: bool = True) -> None:
        self.calls: list[str] = []
        self._stopped = asyncio.Event()
        self._stops = stops

    async def start(self) -> None:
        self.calls.append("start")

    async def run(self) -> None:
        self.calls.append("run")
        await self._stopped.wait()
        self.calls.append("run returned")

    async def stop(self) -> None:
        self.calls.append("stop")
        if self._stops:
            self._stopped.set()


async def test_the_consumer_runs_inside_and_is_stopped_on_exit() -> None:
    fake = FakeConsumer()
    async with running_batch_consumer(cast(BatchConsumer[object], fake)) as task:
        await asyncio.sleep(0)  # let the task begin
        assert fake.calls == ["start", "run"]
        assert not task.done()
    assert task.done()
    assert fake.calls == ["start", "run", "stop", "run returned"]


async def test_a_consumer_that_does_not_stop_fails_within_the_timeout() -> None:
    fake = FakeConsumer(stops=False)
    with pytest.raises(TimeoutError):
        async with running_batch_consumer(
            cast(BatchConsumer[object], fake), stop_timeout=0.2
        ) as task:
            pass
    assert task.cancelled()

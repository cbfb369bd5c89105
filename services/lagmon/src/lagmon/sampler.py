"""The background sampler: one sample every poll interval, fed to the monitor. A failed
sample (Kafka unreachable) is counted and makes every group ERR with the reason; sampling goes on.
A streak of failures is logged once when it starts and once when it ends. A sample that does not
finish within its deadline is a failure too, and the Kafka clients are rebuilt for the next one:
a client stuck on a broker that went away must not freeze the monitor on its last verdicts."""

from __future__ import annotations

import asyncio
import logging
import time

from lagmon.kafka_reader import KafkaLagReader
from lagmon.metrics import MonitorMetrics
from lagmon.monitor import LagMonitor, LagSnapshot

log = logging.getLogger(__name__)


class Sampler:
    def __init__(
        self,
        reader: KafkaLagReader,
        monitor: LagMonitor,
        interval_s: float,
        metrics: MonitorMetrics | None = None,
        sample_timeout_s: float = 30.0,
    ) -> None:
        self.reader = reader
        self.monitor = monitor
        self.interval_s = interval_s
        self.metrics = metrics
        self.sample_timeout_s = sample_timeout_s
        self._started = False
        self.last_success_at: float | None = None
        self._failing_since: float | None = None
        self._failures_in_streak = 0

    async def sample_once(self) -> LagSnapshot:
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            async with asyncio.timeout(self.sample_timeout_s):
                if not self._started:
                    await self.reader.start()
                    self._started = True
                raw = await self.reader.read()
        except Exception as exc:
            now = time.time()
            if isinstance(exc, TimeoutError):
                reason = f"the sample did not finish within {self.sample_timeout_s:g} s"
                await self._restart_clients()
            else:
                reason = describe_error(exc)
            if self._failing_since is None:
                self._failing_since = now
                log.warning("sample failed: %s (every group is ERR until one succeeds)", reason)
            else:
                log.debug("sample failed again: %s", reason)
            self._failures_in_streak += 1
            if self.metrics is not None:
                self.metrics.sample_failures.inc()
            return self.monitor.failed(now, reason)
        snapshot = self.monitor.observe(raw)
        if self._failing_since is not None:
            log.warning(
                "sampling recovered after %d failed samples (%.0fs)",
                self._failures_in_streak,
                snapshot.at - self._failing_since,
            )
            self._failing_since, self._failures_in_streak = None, 0
        self.last_success_at = snapshot.at
        if self.metrics is not None:
            self.metrics.sample_duration.observe(loop.time() - began)
            self.metrics.groups.set(len(snapshot.groups))
        return snapshot

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await self.sample_once()
            # Fixed rate, not fixed delay: observations stay evenly spaced for the rules.
            await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - began)))

    async def _restart_clients(self) -> None:
        """Close the clients (bounded: they may be what hung); the next sample starts fresh ones."""
        try:
            async with asyncio.timeout(self.sample_timeout_s):
                await self.reader.stop()
        except Exception as exc:
            log.warning("closing the Kafka clients failed: %s", describe_error(exc))
        self._started = False

    async def close(self) -> None:
        if self._started:
            await self._restart_clients()


def describe_error(exc: BaseException) -> str:
    """`Type: message`, without the type twice (Kafka errors repeat their name in the message)."""
    name, text = type(exc).__name__, str(exc)
    if text.startswith(f"{name}: "):
        text = text[len(name) + 2 :]
    return f"{name}: {text}" if text else name

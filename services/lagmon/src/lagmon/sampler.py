"""The background sampler: one sample every poll interval, fed to the monitor. A failed
sample (Kafka unreachable) is logged, counted and flagged in the snapshot; sampling goes on."""

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
    ) -> None:
        self.reader = reader
        self.monitor = monitor
        self.interval_s = interval_s
        self.metrics = metrics
        self._started = False
        self.last_success_at: float | None = None

    async def sample_once(self) -> LagSnapshot:
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            if not self._started:
                await self.reader.start()
                self._started = True
            raw = await self.reader.read()
        except Exception as exc:
            log.warning("sample failed: %s: %s", type(exc).__name__, exc)
            if self.metrics is not None:
                self.metrics.sample_failures.inc()
            return self.monitor.failed(time.time(), f"{type(exc).__name__}: {exc}")
        snapshot = self.monitor.observe(raw)
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

    async def close(self) -> None:
        if self._started:
            await self.reader.stop()
            self._started = False

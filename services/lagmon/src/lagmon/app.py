"""The composition root: `create_app(settings)` serves the page, the JSON API, /metrics and the
probes, and runs the sampler as a background task for the app's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lagmon.kafka_reader import KafkaLagReader
from lagmon.metrics import MonitorMetrics
from lagmon.monitor import LagMonitor
from lagmon.sampler import Sampler
from lagmon.settings import Settings
from service_kit.problems import ProblemError, install_problem_handlers, problem_responses

PAGE_HTML = resources.files("lagmon").joinpath("page.html").read_text(encoding="utf-8")


def build_sampler(settings: Settings) -> Sampler:
    expected = tuple(settings.expected_groups)
    monitor = LagMonitor(settings.rules, settings.history_s, tuple(settings.topics), expected)
    reader = KafkaLagReader(
        settings.kafka_bootstrap_servers,
        settings.topics,
        timestamp_fetch_timeout_s=settings.timestamp_fetch_timeout_s,
        request_timeout_s=settings.request_timeout_s,
        expected_groups=expected,
    )
    metrics = MonitorMetrics(lambda: monitor.latest)
    return Sampler(reader, monitor, settings.poll_interval_s, metrics, settings.sample_timeout_s)


def create_app(settings: Settings) -> FastAPI:
    sampler = build_sampler(settings)
    monitor = sampler.monitor
    assert sampler.metrics is not None
    registry = sampler.metrics.registry

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(sampler.run(), name="lagmon-sampler")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await sampler.close()

    app = FastAPI(title="lagmon", lifespan=lifespan)
    app.state.sampler = sampler
    install_problem_handlers(app)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE_HTML)

    @app.get("/api/lag", responses=problem_responses(503))
    async def lag() -> JSONResponse:
        snapshot = monitor.latest
        if snapshot is None:
            raise ProblemError(503, "no sample yet", headers={"Retry-After": "5"})
        body = snapshot.to_json()
        body["poll_interval_s"] = settings.poll_interval_s
        body["window_s"] = settings.window_s
        body["stall_after_s"] = settings.stall_after_s
        body["stop_after_samples"] = settings.stop_after_samples
        body["expected_groups"] = settings.expected_groups
        return JSONResponse(body)

    @app.get("/api/history")
    async def history(
        minutes: float = Query(default=15.0, gt=0, le=24 * 60),
    ) -> dict[str, Any]:
        now = time.time()
        since = now - minutes * 60
        return {"since": since, "now": now, "groups": monitor.history(since)}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        # Ready once a sample succeeded recently (Kafka reachable, the sampler alive).
        fresh_within = max(3 * settings.poll_interval_s, 15.0)
        last = sampler.last_success_at
        if last is None or time.time() - last > fresh_within:
            return JSONResponse({"status": "not ready", "last_sample_at": last}, status_code=503)
        return JSONResponse({"status": "ready", "last_sample_at": last})

    return app

"""The composition root: `create_app(settings)` wires PostgreSQL, the consumer and the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import BaseModel

from counter import repository
from counter.counting import fold_newest_per_blog
from counter.settings import Settings
from service_kit.background import BackgroundConsumer, consuming
from service_kit.consumer import ConsumedEvent, ConsumerMetrics
from service_kit.migrations import apply_migrations

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SCHEMA = "counter"

log = logging.getLogger(__name__)

BLOG_CHANGES_APPLIED = Counter(
    "counter_blog_changes_applied_total",
    "Blog versions applied to counter.blog_state (newest per blog per batch).",
)
BLOG_CHANGES_STALE = Counter(
    "counter_blog_changes_stale_total",
    "Blog versions skipped because an equal or newer version was already applied "
    "(redelivery, duplicate or replay).",
)


class AuthorStats(BaseModel):
    author_id: uuid.UUID
    total_blogs: int


class CountingHandler:
    """The batch handler: one PostgreSQL transaction per batch, durable when it returns."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def __call__(self, batch: Sequence[ConsumedEvent]) -> None:
        newest = fold_newest_per_blog(event.envelope for event in batch)
        plan = await repository.apply_changes(self._pool, newest)
        BLOG_CHANGES_APPLIED.inc(len(plan.changes))
        BLOG_CHANGES_STALE.inc(plan.stale)


@dataclass
class Runtime:
    pool: asyncpg.Pool
    consumer: BackgroundConsumer | None = None  # None: consumption disabled, API only

    @property
    def consumer_healthy(self) -> bool:
        return self.consumer is None or self.consumer.healthy


async def migrate(settings: Settings) -> list[str]:
    return await apply_migrations(settings.database_url, SCHEMA, MIGRATIONS_DIR)


def create_app(settings: Settings) -> FastAPI:
    metrics = ConsumerMetrics() if settings.consumer_enabled else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        applied = await migrate(settings)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
        runtime = Runtime(pool=pool)
        app.state.runtime = runtime
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(pool.close)
            if settings.consumer_enabled:
                runtime.consumer = await stack.enter_async_context(
                    consuming(
                        settings.consumer_config(),
                        CountingHandler(pool),
                        metrics,
                    )
                )
            yield

    app = FastAPI(title="counter", lifespan=lifespan)

    def runtime_of(request: Request) -> Runtime:
        runtime: Runtime = request.app.state.runtime
        return runtime

    @app.get("/authors/{author_id}/stats")
    async def author_stats(author_id: uuid.UUID, request: Request) -> AuthorStats:
        total = await repository.author_total(runtime_of(request).pool, author_id)
        return AuthorStats(author_id=author_id, total_blogs=total)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        runtime = runtime_of(request)
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(repository.ping(runtime.pool), timeout=2.0)
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"error: {type(exc).__name__}"
        checks["consumer"] = (
            "disabled" if runtime.consumer is None else (runtime.consumer.problem or "ok")
        )
        ready = checks["database"] == "ok" and runtime.consumer_healthy
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app

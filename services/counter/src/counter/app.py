"""The composition root: `create_app(settings)` wires PostgreSQL, the consumer and the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import BaseModel

from blog_events import EventDecodeError
from blog_events.fast import FastEnvelope, decode_event_fast
from counter import repository
from counter.counting import fold_newest_per_blog
from counter.settings import Settings
from service_kit import tracing
from service_kit.background import BackgroundConsumer, consuming, install_liveness
from service_kit.consumer import (
    BatchHandler,
    ConsumedEvent,
    ConsumerMetrics,
    Decoder,
    transient_errors,
)
from service_kit.migrations import apply_migrations
from service_kit.pools import CONNECTION_LOST, keep_session
from service_kit.problems import install_problem_handlers, problem_response, problem_responses

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SCHEMA = "counter"

log = logging.getLogger(__name__)


def event_log_fields(envelope: FastEnvelope) -> dict[str, object]:
    """What a log line about one event says of it (JSON logs)."""
    return {"event_id": envelope.event_id, "blog_id": envelope.key}


# The blog contract's decoder: what it rejects is dead-lettered with its message as the reason.
# The fast one (msgspec, pydantic's verdicts: blog_events.fast): decoding was the largest share
# of the counter's CPU (docs/performance.md).
EVENT_DECODER = Decoder(decode_event_fast, (EventDecodeError,), log_fields=event_log_fields)

# PostgreSQL failures that are not about the events: the server unreachable, restarting or
# overloaded, a lost connection, a deadlock or serialization conflict, and a schema or permission
# problem (a deployment to fix, not records to dead-letter). Retried without limit; anything else
# (a value the schema refuses...) isolates the failing event.
IS_TRANSIENT = transient_errors(
    *CONNECTION_LOST,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.SyntaxOrAccessError,
    repository.ConcurrentBlogWrite,
)

BLOG_CHANGES_APPLIED = Counter(
    "counter_blog_changes_applied_total",
    "Blog versions applied to counter.blog_state (newest per blog per batch).",
)
BLOG_CHANGES_STALE = Counter(
    "counter_blog_changes_stale_total",
    "Blog versions skipped because an equal or newer version was already applied "
    "(redelivery, duplicate or replay).",
)


# PostgreSQL unreachable for a request: 503 with Retry-After, not 500.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    *CONNECTION_LOST,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


class AuthorStats(BaseModel):
    author_id: uuid.UUID
    total_blogs: int


class CountingHandler:
    """The batch handler: one PostgreSQL transaction per batch, durable when it returns."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def __call__(self, batch: Sequence[ConsumedEvent[FastEnvelope]]) -> None:
        newest = fold_newest_per_blog(event.envelope for event in batch)
        plan = await repository.apply_changes(self._pool, newest)
        BLOG_CHANGES_APPLIED.inc(len(plan.changes))
        BLOG_CHANGES_STALE.inc(plan.stale)


@dataclass
class Runtime:
    pool: asyncpg.Pool
    consumer: BackgroundConsumer[FastEnvelope] | None = None  # None: consumption disabled, API only

    @property
    def consumer_healthy(self) -> bool:
        return self.consumer is None or self.consumer.healthy


async def migrate(settings: Settings) -> list[str]:
    return await apply_migrations(settings.database_url, SCHEMA, MIGRATIONS_DIR)


def create_app(
    settings: Settings,
    *,
    wrap_handler: Callable[[BatchHandler[FastEnvelope]], BatchHandler[FastEnvelope]] | None = None,
) -> FastAPI:
    """`wrap_handler` is a seam for tests (fault injection around the batch handler)."""
    metrics = ConsumerMetrics() if settings.consumer_enabled else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            applied = await migrate(settings)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        # No session state on these connections (one transaction per batch, plain reads).
        pool = await asyncpg.create_pool(
            settings.database_url, min_size=1, max_size=4, reset=keep_session
        )
        runtime = Runtime(pool=pool)
        handler: BatchHandler[FastEnvelope] = CountingHandler(pool)
        if wrap_handler is not None:
            handler = wrap_handler(handler)
        app.state.runtime = runtime
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(pool.close)
            if settings.consumer_enabled:
                runtime.consumer = await stack.enter_async_context(
                    consuming(
                        settings.consumer_config(),
                        handler,
                        metrics,
                        decoder=EVENT_DECODER,
                        is_transient=IS_TRANSIENT,
                    )
                )
            yield

    app = FastAPI(title="counter", lifespan=lifespan)
    tracing.instrument_app(app)  # a no-op unless tracing is on (OTEL_TRACES_EXPORTER)

    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %r", exc)
        return problem_response(
            request, 503, "database unavailable, retry later", headers={"Retry-After": "5"}
        )

    install_problem_handlers(app, extra=dict.fromkeys(DATABASE_UNAVAILABLE, database_unavailable))

    def runtime_of(request: Request) -> Runtime:
        runtime: Runtime = request.app.state.runtime
        return runtime

    @app.get("/authors/{author_id}/stats", responses=problem_responses(503))
    async def author_stats(author_id: uuid.UUID, request: Request) -> AuthorStats:
        total = await repository.author_total(runtime_of(request).pool, author_id)
        return AuthorStats(author_id=author_id, total_blogs=total)

    def consumer_of(request: Request) -> BackgroundConsumer[FastEnvelope] | None:
        runtime: Runtime | None = getattr(request.app.state, "runtime", None)
        return runtime.consumer if runtime is not None else None

    install_liveness(app, consumer_of)

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

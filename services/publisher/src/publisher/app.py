"""The composition root: `create_app(settings)` wires the database pool, the blog store, the
outbox relay, the Kafka status reader, the idempotency-key purge, the middleware, the error
handlers (`publisher.errors`) and the routers (`publisher.routers`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from fastapi import FastAPI

from publisher import idempotency
from publisher.auth import TokenCache
from publisher.dependencies import Runtime
from publisher.errors import install_error_handlers
from publisher.kafka_status import KafkaStatus
from publisher.metrics import PublisherMetrics
from publisher.middleware import (
    BodySizeLimitMiddleware,
    JsonUtf8Middleware,
    RequestMetricsMiddleware,
)
from publisher.ratelimit import TokenBucketLimiter
from publisher.relay import OutboxRelay
from publisher.routers import blogs, ops, status
from publisher.settings import PublisherSettings
from publisher.store import BlogStore
from service_kit import tracing
from service_kit.migrations import apply_migrations
from service_kit.pools import keep_session

__all__ = ["MIGRATIONS_DIR", "SCHEMA", "Runtime", "create_app"]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SCHEMA = "publisher"


async def purge_expired_keys(rt: Runtime) -> None:
    """Every `idempotency_purge_interval_s`, delete the expired idempotency keys (every replica
    does it; a delete of what is already gone costs nothing)."""
    interval = rt.settings.idempotency_purge_interval_s
    while True:
        try:
            purged = await idempotency.purge_expired(rt.pool, rt.settings.db_timeout_s)
        except Exception as exc:  # the next round tries again; the task must not die
            log.warning("idempotency keys: purge failed (%r); next try in %.0fs", exc, interval)
        else:
            if purged:
                log.info("idempotency keys: purged %d expired", purged)
        await asyncio.sleep(interval)


def create_app(settings: PublisherSettings) -> FastAPI:
    metrics = PublisherMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            applied = await apply_migrations(settings.dsn, SCHEMA, MIGRATIONS_DIR)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
        pool = await asyncpg.create_pool(
            settings.dsn,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
            timeout=settings.db_timeout_s,
            command_timeout=settings.db_timeout_s * 2,
            # No session state on these connections: the relay has its own, idempotency keys
            # take transaction-scoped locks.
            reset=keep_session,
        )
        kafka = KafkaStatus(settings.kafka_bootstrap_servers, settings.kafka_request_timeout_ms)
        relay = OutboxRelay(settings, metrics) if settings.relay_enabled else None
        relay_task = asyncio.create_task(relay.run(), name="outbox-relay") if relay else None
        rt = Runtime(
            settings=settings,
            metrics=metrics,
            pool=pool,
            store=BlogStore(pool, settings.topic, settings.db_timeout_s),
            kafka=kafka,
            relay=relay,
            write_limiter=(
                TokenBucketLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
                if settings.rate_limit_per_s > 0
                else None
            ),
            tokens=TokenCache(settings.token_cache_ttl_s, settings.token_cache_max_entries),
            relay_task=relay_task,
        )
        app.state.runtime = rt
        purge_task = asyncio.create_task(purge_expired_keys(rt), name="idempotency-key-purge")
        try:
            yield
        finally:
            rt.stopping = True
            purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purge_task
            if relay is not None and relay_task is not None and not relay_task.done():
                relay.stop()
                try:
                    await asyncio.wait_for(relay_task, 15.0)
                except TimeoutError:
                    log.warning("outbox relay did not stop in time; cancelled")
                except Exception:
                    log.exception("outbox relay failed")
            await kafka.close()
            await pool.close()

    app = FastAPI(title="publisher", lifespan=lifespan)
    # Starlette wraps in reverse order: the size limit runs first, then the UTF-8 check.
    app.add_middleware(JsonUtf8Middleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Added last = outermost, so it also counts the 413s and the 503s.
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    install_error_handlers(app)
    tracing.instrument_app(app)  # a no-op unless tracing is on (OTEL_TRACES_EXPORTER)
    app.include_router(blogs.router)
    app.include_router(status.router)
    app.include_router(ops.router)
    return app

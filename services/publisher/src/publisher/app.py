"""The composition root: `create_app(settings)` wires the database pool, the blog store, the
outbox relay, the Kafka status reader, the middleware and the routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import asyncpg
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from publisher.auth import bearer_token
from publisher.kafka_status import KafkaStatus
from publisher.metrics import PublisherMetrics
from publisher.middleware import BodySizeLimitMiddleware, RequestMetricsMiddleware
from publisher.models import (
    BlogDraft,
    BlogOut,
    BlogPage,
    BlogStatus,
    EventPosition,
    GroupProgress,
    WriteAccepted,
)
from publisher.relay import OutboxRelay
from publisher.settings import PublisherSettings
from publisher.store import (
    Blog,
    BlogNotFoundError,
    BlogStore,
    InvalidCursorError,
    NotBlogAuthorError,
    PageCursor,
)
from service_kit.migrations import apply_migrations

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SCHEMA = "publisher"
DB_RETRY_AFTER_S = 5
KAFKA_PROBE_TIMEOUT_S = 2.0

# What "PostgreSQL is unreachable" looks like to asyncpg: refused/reset connections, the server
# shutting down or starting up, and pool/connect timeouts.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
)
# For health probes: any database failure means "not ready".
DATABASE_ERRORS: tuple[type[Exception], ...] = (*DATABASE_UNAVAILABLE, asyncpg.PostgresError)


@dataclass
class Runtime:
    """What the lifespan builds and the routes use."""

    settings: PublisherSettings
    metrics: PublisherMetrics
    pool: asyncpg.Pool
    store: BlogStore
    kafka: KafkaStatus
    relay: OutboxRelay | None


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


async def current_author(
    rt: RuntimeDep, authorization: Annotated[str | None, Header()] = None
) -> uuid.UUID:
    """The author identified by the bearer token: the only source of identity."""
    token = bearer_token(authorization)
    author_id = await rt.store.author_for_token(token) if token else None
    if author_id is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing, invalid or revoked bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="publisher"'},
        )
    return author_id


AuthorDep = Annotated[uuid.UUID, Depends(current_author)]


def status_url(blog: Blog) -> str:
    return f"/blogs/{blog.id}/status?version={blog.version}"


def accepted(blog: Blog, response: Response) -> WriteAccepted:
    url = status_url(blog)
    response.headers["Location"] = f"/blogs/{blog.id}"
    return WriteAccepted(id=blog.id, version=blog.version, status_url=url)


def blog_out(blog: Blog) -> BlogOut:
    return BlogOut(
        id=blog.id,
        author_id=blog.author_id,
        title=blog.title,
        body=blog.body,
        tags=blog.tags,
        version=blog.version,
        created_at=blog.created_at,
        updated_at=blog.updated_at,
    )


def create_app(settings: PublisherSettings) -> FastAPI:
    metrics = PublisherMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        applied = await apply_migrations(settings.database_url, SCHEMA, MIGRATIONS_DIR)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
            timeout=settings.db_timeout_s,
            command_timeout=settings.db_timeout_s * 2,
        )
        kafka = KafkaStatus(settings.kafka_bootstrap_servers, settings.kafka_request_timeout_ms)
        relay = OutboxRelay(settings, metrics) if settings.relay_enabled else None
        relay_task = asyncio.create_task(relay.run(), name="outbox-relay") if relay else None
        app.state.runtime = Runtime(
            settings=settings,
            metrics=metrics,
            pool=pool,
            store=BlogStore(pool, settings.topic, settings.db_timeout_s),
            kafka=kafka,
            relay=relay,
        )
        try:
            yield
        finally:
            if relay is not None and relay_task is not None:
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
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Added last = outermost, so it also counts the 413s and the 503s.
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)

    async def database_unavailable(_request: Request, exc: Exception) -> Response:
        log.warning("database unavailable: %r", exc)
        return JSONResponse(
            {"detail": "database unavailable, retry later"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(DB_RETRY_AFTER_S)},
        )

    for unavailable in DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, database_unavailable)

    @app.post("/blogs", status_code=status.HTTP_202_ACCEPTED, response_model=WriteAccepted)
    async def publish_blog(
        draft: BlogDraft, author_id: AuthorDep, rt: RuntimeDep, response: Response
    ) -> WriteAccepted:
        blog = await rt.store.create(author_id, draft)
        return accepted(blog, response)

    @app.put("/blogs/{blog_id}", status_code=status.HTTP_202_ACCEPTED, response_model=WriteAccepted)
    async def replace_blog(
        blog_id: uuid.UUID,
        draft: BlogDraft,
        author_id: AuthorDep,
        rt: RuntimeDep,
        response: Response,
    ) -> WriteAccepted:
        try:
            blog = await rt.store.replace(blog_id, author_id, draft)
        except BlogNotFoundError:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "blog not found") from None
        except NotBlogAuthorError:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "not the blog's author") from None
        return accepted(blog, response)

    @app.delete(
        "/blogs/{blog_id}", status_code=status.HTTP_202_ACCEPTED, response_model=WriteAccepted
    )
    async def delete_blog(
        blog_id: uuid.UUID, author_id: AuthorDep, rt: RuntimeDep, response: Response
    ) -> WriteAccepted:
        try:
            blog = await rt.store.delete(blog_id, author_id)
        except BlogNotFoundError:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "blog not found") from None
        except NotBlogAuthorError:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "not the blog's author") from None
        return accepted(blog, response)

    @app.get("/blogs/{blog_id}", response_model=BlogOut)
    async def get_blog(blog_id: uuid.UUID, rt: RuntimeDep) -> BlogOut:
        blog = await rt.store.get(blog_id)
        if blog is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "blog not found")
        return blog_out(blog)

    @app.get("/blogs", response_model=BlogPage)
    async def list_blogs(
        rt: RuntimeDep,
        author: uuid.UUID,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> BlogPage:
        try:
            position = PageCursor.decode(cursor) if cursor else None
        except InvalidCursorError:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid cursor") from None
        blogs, next_cursor = await rt.store.list_by_author(author, limit, position)
        return BlogPage(
            items=[blog_out(b) for b in blogs],
            next_cursor=next_cursor.encode() if next_cursor else None,
        )

    @app.get("/blogs/{blog_id}/status", response_model=BlogStatus)
    async def blog_status(
        blog_id: uuid.UUID,
        rt: RuntimeDep,
        version: Annotated[int | None, Query(ge=1)] = None,
    ) -> BlogStatus:
        """Where the blog's event (latest version, or `version`) is: relayed to Kafka yet, and
        which consumer groups have processed it (committed offset beyond it)."""
        blog = await rt.store.get(blog_id, include_deleted=True)
        if blog is None or (version is not None and version > blog.version):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "blog version not found")
        wanted = version or blog.version
        position = await rt.store.event_position(blog_id, wanted)
        groups: dict[str, GroupProgress] = {}
        for group in rt.settings.status_groups:
            groups[group] = await group_progress(rt, group, position)
        return BlogStatus(
            blog_id=blog_id,
            version=wanted,
            event=EventPosition(partition=position[0], offset=position[1]) if position else None,
            groups=groups,
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(rt: RuntimeDep) -> JSONResponse:
        """Ready = PostgreSQL answers. Kafka is reported only: writes succeed without it."""
        database_ok = True
        try:
            await rt.store.ping()
        except DATABASE_ERRORS:
            database_ok = False
        kafka_ok = await rt.kafka.reachable(KAFKA_PROBE_TIMEOUT_S)
        relay_state = (
            "disabled" if rt.relay is None else "leader" if rt.relay.is_leader else "standby"
        )
        return JSONResponse(
            {
                "status": "ready" if database_ok else "unready",
                "database": "ok" if database_ok else "unreachable",
                "kafka": "ok" if kafka_ok else "unreachable",
                "relay": relay_state,
            },
            status_code=status.HTTP_200_OK if database_ok else status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    @app.get("/metrics")
    async def metrics_endpoint(rt: RuntimeDep) -> Response:
        with contextlib.suppress(*DATABASE_ERRORS):
            rt.metrics.outbox_unsent_rows.set(await rt.store.unsent_count())
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def group_progress(
    rt: Runtime, group: str, position: tuple[int, int] | None
) -> GroupProgress:
    if position is None:
        return GroupProgress(processed=False, committed_offset=None)
    partition, offset = position
    try:
        committed = await rt.kafka.committed_offset(group, rt.settings.topic, partition)
    except Exception as exc:
        log.warning("cannot read offsets of group %s: %r", group, exc)
        return GroupProgress(processed=False, committed_offset=None, error="kafka unreachable")
    # A committed offset is the next one the group will read.
    return GroupProgress(
        processed=committed is not None and committed > offset, committed_offset=committed
    )

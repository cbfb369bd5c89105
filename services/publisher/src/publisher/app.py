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
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from publisher.auth import DbConnection, author_for_token, bearer_token
from publisher.kafka_status import KafkaStatus
from publisher.metrics import PublisherMetrics
from publisher.middleware import (
    BodySizeLimitMiddleware,
    JsonUtf8Middleware,
    RequestMetricsMiddleware,
)
from publisher.models import (
    BlogDraft,
    BlogOut,
    BlogPage,
    BlogStatus,
    ErrorDetail,
    EventPosition,
    GroupProgress,
    WriteAccepted,
)
from publisher.ratelimit import TokenBucketLimiter, retry_after_header
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
    write_limiter: TokenBucketLimiter | None


# `async def`: a sync dependency would run in the thread pool, a thread hop on every request.
async def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


async def write_connection(rt: RuntimeDep) -> AsyncIterator[DbConnection]:
    """One pool connection per write request, shared by the token lookup and the write, so a
    request waits for the pool once, not twice."""
    async with rt.store.connection() as conn:
        yield conn


# scope="function": the connection returns to the pool when the route returns, not after the
# response has been sent.
ConnectionDep = Annotated[DbConnection, Depends(write_connection, scope="function")]


# auto_error=False: a missing or non-Bearer header gets our 401 (FastAPI's own is a 403).
bearer_scheme = HTTPBearer(auto_error=False, description="An API token of the author.")


async def current_author(
    rt: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    conn: ConnectionDep,
) -> uuid.UUID:
    """The author identified by the bearer token: the only source of identity."""
    token = bearer_token(f"Bearer {credentials.credentials}") if credentials else None
    author_id = await author_for_token(conn, token) if token else None
    if author_id is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing, invalid or revoked bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="publisher"'},
        )
    return author_id


AuthorDep = Annotated[uuid.UUID, Depends(current_author)]


async def writing_author(rt: RuntimeDep, author_id: AuthorDep) -> uuid.UUID:
    """The authenticated author of a write, within their write rate (else 429)."""
    if rt.write_limiter is not None:
        wait_s = rt.write_limiter.acquire(author_id)
        if wait_s is not None:
            rt.metrics.rate_limited_writes.inc()
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                detail=(
                    f"write rate limit exceeded ({rt.write_limiter.rate_per_s:g}/s per author,"
                    f" bursts of {rt.write_limiter.burst}); retry after the Retry-After seconds"
                ),
                headers={"Retry-After": retry_after_header(wait_s)},
            )
    return author_id


WriterDep = Annotated[uuid.UUID, Depends(writing_author)]


async def keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset on release, a no-op: asyncpg's default runs one more round trip per
    release (`RESET ALL; UNLISTEN *; ...`). Pool connections never change session state (no SET,
    LISTEN, advisory lock or cursor: the relay has its own connection), and asyncpg still rolls
    back a transaction left open before calling this."""


def error_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI documentation of the error answers a route gives (all `{"detail": "..."}`)."""
    descriptions = {
        401: "Missing, invalid or revoked bearer token",
        403: "The blog belongs to another author",
        404: "The blog does not exist or is deleted",
        413: "Request body too large",
        429: "Write rate limit exceeded (see Retry-After)",
        503: "Database unavailable (see Retry-After)",
    }
    return {code: {"model": ErrorDetail, "description": descriptions[code]} for code in codes}


WRITE_ERRORS = (401, 413, 429, 503)


def status_url(blog: Blog) -> str:
    return f"/blogs/{blog.id}/status?version={blog.version}"


def accepted(blog: Blog, response: Response) -> WriteAccepted:
    url = status_url(blog)
    response.headers["Location"] = f"/blogs/{blog.id}"
    return WriteAccepted(id=blog.id, version=blog.version, status_url=url)


def printable(part: object) -> object:
    """A location part as JSON can carry: an unknown field's name may be a lone surrogate."""
    if isinstance(part, str):
        return part.encode("utf-8", "backslashreplace").decode("utf-8")
    return part


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
            reset=keep_session,
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
            write_limiter=(
                TokenBucketLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
                if settings.rate_limit_per_s > 0
                else None
            ),
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
    # Starlette wraps in reverse order: the size limit runs first, then the UTF-8 check.
    app.add_middleware(JsonUtf8Middleware)
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

    async def invalid_request(_request: Request, exc: Exception) -> Response:
        # FastAPI's default also echoes each invalid `input`: that can be the whole (large) body,
        # and text that is not even encodable (a lone surrogate made the 422 itself fail).
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "type": err["type"],
                "loc": [printable(part) for part in err["loc"]],
                "msg": err["msg"],
            }
            for err in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    app.add_exception_handler(RequestValidationError, invalid_request)

    async def internal_error(_request: Request, exc: Exception) -> Response:
        # Starlette logs the traceback itself; the client gets a message, not a bare text/plain.
        return JSONResponse(
            {"detail": "internal server error"},
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    app.add_exception_handler(Exception, internal_error)

    # The store's domain errors, for every route that changes a blog.
    async def blog_not_found(_request: Request, _exc: Exception) -> Response:
        return JSONResponse({"detail": "blog not found"}, status_code=status.HTTP_404_NOT_FOUND)

    async def not_the_author(_request: Request, _exc: Exception) -> Response:
        return JSONResponse(
            {"detail": "not the blog's author"}, status_code=status.HTTP_403_FORBIDDEN
        )

    app.add_exception_handler(BlogNotFoundError, blog_not_found)
    app.add_exception_handler(NotBlogAuthorError, not_the_author)

    @app.post(
        "/blogs",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=WriteAccepted,
        responses=error_responses(*WRITE_ERRORS),
    )
    async def publish_blog(
        draft: BlogDraft,
        author_id: WriterDep,
        rt: RuntimeDep,
        conn: ConnectionDep,
        response: Response,
    ) -> WriteAccepted:
        blog = await rt.store.create(conn, author_id, draft)
        return accepted(blog, response)

    @app.put(
        "/blogs/{blog_id}",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=WriteAccepted,
        responses=error_responses(*WRITE_ERRORS, 403, 404),
    )
    async def replace_blog(
        blog_id: uuid.UUID,
        draft: BlogDraft,
        author_id: WriterDep,
        rt: RuntimeDep,
        conn: ConnectionDep,
        response: Response,
    ) -> WriteAccepted:
        blog = await rt.store.replace(conn, blog_id, author_id, draft)
        return accepted(blog, response)

    @app.delete(
        "/blogs/{blog_id}",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=WriteAccepted,
        responses=error_responses(*WRITE_ERRORS, 403, 404),
    )
    async def delete_blog(
        blog_id: uuid.UUID,
        author_id: WriterDep,
        rt: RuntimeDep,
        conn: ConnectionDep,
        response: Response,
    ) -> WriteAccepted:
        blog = await rt.store.delete(conn, blog_id, author_id)
        return accepted(blog, response)

    @app.get("/blogs/{blog_id}", response_model=BlogOut, responses=error_responses(404, 503))
    async def get_blog(blog_id: uuid.UUID, rt: RuntimeDep) -> BlogOut:
        blog = await rt.store.get(blog_id)
        if blog is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "blog not found")
        return BlogOut.model_validate(blog)

    @app.get("/blogs", response_model=BlogPage, responses=error_responses(503))
    async def list_blogs(
        rt: RuntimeDep,
        author: uuid.UUID,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> BlogPage:
        try:
            position = PageCursor.decode(cursor) if cursor else None
        except InvalidCursorError:
            # Same shape as every other 422: a list of errors, each naming its field.
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ("query", "cursor"),
                        "msg": "invalid cursor: use a next_cursor this API returned",
                        "input": cursor,
                    }
                ]
            ) from None
        blogs, next_cursor = await rt.store.list_by_author(author, limit, position)
        return BlogPage(
            items=[BlogOut.model_validate(b) for b in blogs],
            next_cursor=next_cursor.encode() if next_cursor else None,
        )

    @app.get(
        "/blogs/{blog_id}/status", response_model=BlogStatus, responses=error_responses(404, 503)
    )
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

    @app.get(
        "/readyz",
        responses={503: {"description": "Not ready: PostgreSQL unreachable (same body)"}},
    )
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

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
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

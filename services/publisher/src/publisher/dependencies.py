"""What the routes depend on (FastAPI `Annotated` dependencies): the runtime the lifespan built,
one pool connection per write request, and the authenticated, rate-limited author."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from publisher.auth import DbConnection, TokenCache, bearer_token
from publisher.kafka_status import KafkaStatus
from publisher.metrics import PublisherMetrics
from publisher.ratelimit import TokenBucketLimiter, retry_after_header
from publisher.relay import OutboxRelay
from publisher.settings import PublisherSettings
from publisher.store import BlogStore
from service_kit.problems import ProblemError, problem_type


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
    tokens: TokenCache
    relay_task: asyncio.Task[None] | None = None
    stopping: bool = False

    @property
    def relay_died(self) -> str | None:
        """Why the relay task ended by itself (None while it runs, or when it was stopped): the
        outbox would never be sent again by this replica, so it is not alive."""
        task = self.relay_task
        if task is None or not task.done() or self.stopping:
            return None
        if task.cancelled():
            return "outbox relay task cancelled"
        error = task.exception()
        return f"outbox relay task died: {error!r}" if error else "outbox relay task ended"


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
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    rt: RuntimeDep,
    conn: ConnectionDep,
) -> uuid.UUID:
    """The author identified by the bearer token: the only source of identity."""
    token = bearer_token(f"Bearer {credentials.credentials}") if credentials else None
    author_id = await rt.tokens.author_for_token(conn, token) if token else None
    if author_id is None:
        raise ProblemError(
            401,
            "missing, invalid or revoked bearer token",
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
            raise ProblemError(
                429,
                f"write rate limit exceeded ({rt.write_limiter.rate_per_s:g}/s per author,"
                f" bursts of {rt.write_limiter.burst}); retry after the Retry-After seconds",
                type=problem_type("rate-limited"),
                headers={"Retry-After": retry_after_header(wait_s)},
            )
    return author_id


WriterDep = Annotated[uuid.UUID, Depends(writing_author)]

"""What the routes depend on (FastAPI `Annotated` dependencies): the runtime the lifespan built,
and for a write the authenticated, rate-limited author (`Writer`)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from publisher.auth import TokenCache, bearer_token
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


# auto_error=False: a missing or non-Bearer header gets our 401 (FastAPI's own is a 403).
bearer_scheme = HTTPBearer(auto_error=False, description="An API token of the author.")


@dataclass(frozen=True, slots=True)
class Writer:
    """Who writes: the author the bearer token names (the only source of identity), within
    their write rate."""

    rt: Runtime
    author_id: uuid.UUID


async def writer(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Writer:
    """One plain dependency for every write route: each dependency FastAPI solves costs CPU on
    every request (this was four, one of them a generator holding the pool connection). 401
    without a valid token, then 429 over the write rate. The token lookup, when the token cache
    misses, borrows a pool connection for its one statement; the route takes its own for the
    write, after this one is back."""
    rt = await runtime(request)  # called, not declared: one dependency less to solve
    token = bearer_token(f"Bearer {credentials.credentials}") if credentials else None
    author_id = await rt.tokens.author_for_token(rt.pool, token) if token else None
    if author_id is None:
        raise ProblemError(
            401,
            "missing, invalid or revoked bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="publisher"'},
        )
    check_write_rate(rt, author_id)
    return Writer(rt, author_id)


WriterDep = Annotated[Writer, Depends(writer)]


def check_write_rate(rt: Runtime, author_id: uuid.UUID) -> None:
    """Raise 429 when the author is over their write rate."""
    if rt.write_limiter is None:
        return
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

"""Fixtures for the publisher's integration tests: the app run in-process (its lifespan entered
directly, requests through httpx's ASGI transport) against a fresh database and topic."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from blog_testkit import Stack
from publisher.app import Runtime, create_app
from publisher.auth import create_author
from publisher.settings import PublisherSettings


@dataclass
class RunningPublisher:
    app: FastAPI
    client: httpx.AsyncClient
    settings: PublisherSettings

    @property
    def runtime(self) -> Runtime:
        rt: Runtime = self.app.state.runtime
        return rt


@dataclass
class Author:
    id: uuid.UUID
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


PublisherFactory = Callable[..., contextlib.AbstractAsyncContextManager[RunningPublisher]]


@pytest.fixture
def publisher_factory(stack: Stack, database_url: str, topic: str) -> PublisherFactory:
    """`async with publisher_factory(**settings_overrides) as running:` one in-process app."""

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[RunningPublisher]:
        values: dict[str, Any] = {
            "database_url": database_url,
            "kafka_bootstrap_servers": stack.kafka_bootstrap,
            "topic": topic,
            "relay_enabled": False,
            "relay_poll_interval_s": 0.5,
            "relay_standby_retry_s": 0.2,
            "relay_retry_max_s": 1.0,
            **overrides,
        }
        settings = PublisherSettings(**values)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://publisher") as c:
                yield RunningPublisher(app, c, settings)

    return start


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def publisher(publisher_factory: PublisherFactory) -> AsyncIterator[RunningPublisher]:
    """The app without its relay (outbox rows stay unsent unless a test relays them)."""
    async with publisher_factory() as running:
        yield running


async def new_author(database_url: str, name: str = "ada") -> Author:
    conn = await asyncpg.connect(database_url)
    try:
        author_id, token = await create_author(conn, name)
    finally:
        await conn.close()
    return Author(author_id, token)


def draft(
    title: str = "Hello", body: str = "world", tags: list[str] | None = None
) -> dict[str, Any]:
    return {"title": title, "body": body, "tags": tags if tags is not None else ["intro"]}

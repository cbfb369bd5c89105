"""COUNTER_MIGRATE_ON_START=false: the service starts without touching its schema, which
`python -m counter migrate` (the chart's pre-install/pre-upgrade hook Job) prepares instead."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from blog_testkit import Stack
from counter.app import create_app, migrate
from counter.settings import Settings


def settings_for(stack: Stack, database_url: str, topic: str, migrate_on_start: bool) -> Settings:
    return Settings(
        database_url=database_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        topic=topic,
        group_id=f"counter-{topic}",
        consumer_enabled=False,
        migrate_on_start=migrate_on_start,
    )


async def has_migrations_table(database_url: str) -> bool:
    connection = await asyncpg.connect(database_url)
    try:
        found = await connection.fetchval("SELECT to_regclass('counter.schema_migrations')")
    finally:
        await connection.close()
    return found is not None


def test_migrate_on_start_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUNTER_DATABASE_URL", "postgresql://u@h/db")
    assert Settings().migrate_on_start is True
    monkeypatch.setenv("COUNTER_MIGRATE_ON_START", "false")
    assert Settings().migrate_on_start is False


@pytest.mark.integration
async def test_start_without_migrations_then_with_the_migrate_command(
    stack: Stack, database_url: str, topic: str
) -> None:
    settings = settings_for(stack, database_url, topic, migrate_on_start=False)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert not await has_migrations_table(database_url)

    assert await migrate(settings) == ["001_init.sql"]
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as client,
    ):
        response = await client.get("/authors/00000000-0000-0000-0000-000000000001/stats")
        assert response.status_code == 200, response.text
        assert response.json()["total_blogs"] == 0

"""PUBLISHER_MIGRATE_ON_START=false: the service starts without touching its schema, which
`python -m publisher migrate` (the chart's pre-install/pre-upgrade hook Job) prepares instead."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from publisher.__main__ import migrate
from publisher.settings import PublisherSettings

from .conftest import PublisherFactory


async def has_migrations_table(database_url: str) -> bool:
    connection = await asyncpg.connect(database_url)
    try:
        found = await connection.fetchval("SELECT to_regclass('publisher.schema_migrations')")
    finally:
        await connection.close()
    return found is not None


def test_migrate_on_start_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLISHER_DATABASE_URL", "postgresql://u@h/db")
    assert PublisherSettings().migrate_on_start is True
    monkeypatch.setenv("PUBLISHER_MIGRATE_ON_START", "false")
    assert PublisherSettings().migrate_on_start is False


@pytest.mark.integration
async def test_start_without_migrations_then_with_the_migrate_command(
    publisher_factory: PublisherFactory, database_url: str
) -> None:
    async with publisher_factory(migrate_on_start=False) as running:
        assert not await has_migrations_table(database_url)
        settings = running.settings

    assert await migrate(settings) == 0
    assert await has_migrations_table(database_url)
    async with publisher_factory(migrate_on_start=False) as running:
        # A query on publisher.blogs: 404 (not 503) means the schema is there.
        response = await running.client.get(f"/blogs/{uuid.uuid4()}")
        assert response.status_code == 404, response.text

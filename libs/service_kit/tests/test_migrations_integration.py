"""The migrations runner against a real PostgreSQL database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from service_kit.migrations import apply_migrations

pytestmark = pytest.mark.integration


def write_migrations(directory: Path) -> None:
    (directory / "001_create.sql").write_text(
        "CREATE TABLE demo.items (id bigint PRIMARY KEY, name text NOT NULL);"
    )
    (directory / "002_seed.sql").write_text(
        "INSERT INTO demo.items VALUES (1, 'one');\nINSERT INTO demo.items VALUES (2, 'two');"
    )


async def test_migrations_apply_once(database_url: str, tmp_path: Path) -> None:
    write_migrations(tmp_path)
    assert await apply_migrations(database_url, "demo", tmp_path) == [
        "001_create.sql",
        "002_seed.sql",
    ]
    assert await apply_migrations(database_url, "demo", tmp_path) == []

    (tmp_path / "003_more.sql").write_text("INSERT INTO demo.items VALUES (3, 'three');")
    assert await apply_migrations(database_url, "demo", tmp_path) == ["003_more.sql"]

    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM demo.items") == 3
        names = await connection.fetch("SELECT name FROM demo.schema_migrations ORDER BY name")
        assert [r["name"] for r in names] == ["001_create.sql", "002_seed.sql", "003_more.sql"]
    finally:
        await connection.close()


async def test_concurrent_runners_apply_each_migration_once(
    database_url: str, tmp_path: Path
) -> None:
    write_migrations(tmp_path)
    results = await asyncio.gather(
        *(apply_migrations(database_url, "demo", tmp_path) for _ in range(4))
    )
    applied = sorted(name for result in results for name in result)
    assert applied == ["001_create.sql", "002_seed.sql"]


async def test_a_failing_migration_is_rolled_back_and_not_recorded(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE demo.ok (id int);")
    (tmp_path / "002_broken.sql").write_text(
        "CREATE TABLE demo.half (id int);\nSELECT no_such_function();"
    )
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await apply_migrations(database_url, "demo", tmp_path)
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT to_regclass('demo.half')") is None
        recorded = await connection.fetch("SELECT name FROM demo.schema_migrations")
        assert [r["name"] for r in recorded] == ["001_ok.sql"]
    finally:
        await connection.close()


async def test_invalid_schema_name_is_refused(database_url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid schema"):
        await apply_migrations(database_url, "demo; DROP TABLE x", tmp_path)

"""Forward-only SQL migrations: `NNN_name.sql` files applied in order, each once, each in its own
transaction, recorded in `<schema>.schema_migrations`. A PostgreSQL advisory lock serialises
concurrent runners (several instances starting at once)."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATION_FILE = re.compile(r"^(\d{3,})_[A-Za-z0-9_-]+\.sql$")
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def migration_files(directory: Path) -> list[Path]:
    """The migration files of `directory`, in apply order; rejects duplicate numbers."""
    files = sorted(
        (p for p in directory.iterdir() if MIGRATION_FILE.match(p.name)),
        key=lambda p: (int(MIGRATION_FILE.match(p.name).group(1)), p.name),  # type: ignore[union-attr]
    )
    numbers = [MIGRATION_FILE.match(p.name).group(1) for p in files]  # type: ignore[union-attr]
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate migration numbers in {directory}: {duplicates}")
    return files


def advisory_lock_key(schema: str) -> int:
    """A stable signed 64-bit lock id per schema, so services never block each other."""
    digest = hashlib.sha256(f"migrations:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def apply_migrations(dsn: str, schema: str, directory: Path) -> list[str]:
    """Apply the pending migrations of `directory` to `schema`; returns the names applied."""
    if not SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    files = migration_files(directory)
    connection = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        lock_key = advisory_lock_key(schema)
        await connection.execute("SELECT pg_advisory_lock($1)", lock_key)
        try:
            # Only when missing: even `IF NOT EXISTS` needs CREATE on the database, which a role
            # owning just its schema (created for it beforehand) does not have.
            exists = await connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema
            )
            if not exists:
                # `schema` is validated above: identifiers cannot be bind parameters.
                await connection.execute(f"CREATE SCHEMA {schema}")
            await connection.execute(
                f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
                " name text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                row["name"]
                for row in await connection.fetch(
                    f"SELECT name FROM {schema}.schema_migrations"  # noqa: S608 - validated name
                )
            }
            for path in files:
                if path.name in done:
                    continue
                async with connection.transaction():
                    await connection.execute(path.read_text(encoding="utf-8"))
                    await connection.execute(
                        f"INSERT INTO {schema}.schema_migrations (name) VALUES ($1)",  # noqa: S608 - ditto
                        path.name,
                    )
                log.info("applied migration %s/%s", schema, path.name)
                applied.append(path.name)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", lock_key)
    finally:
        await connection.close()
    return applied

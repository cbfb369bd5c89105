"""Each service's PostgreSQL role owns its schema and nothing else (issue 12 item 4): `make up`
creates the roles (BLOG_PUBLISHER_DSN, BLOG_COUNTER_DSN), the migrations run as them, and one
service's role can neither read nor write the other's tables."""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg
import pytest

from blog_testkit import Stack
from counter.app import MIGRATIONS_DIR as COUNTER_MIGRATIONS
from publisher.app import MIGRATIONS_DIR as PUBLISHER_MIGRATIONS
from service_kit.migrations import apply_migrations

pytestmark = pytest.mark.integration


@pytest.fixture
async def migrated(service_database_urls: dict[str, str]) -> dict[str, str]:
    """Both schemas migrated, each by its own role, in a fresh database."""
    await apply_migrations(service_database_urls["publisher"], "publisher", PUBLISHER_MIGRATIONS)
    await apply_migrations(service_database_urls["counter"], "counter", COUNTER_MIGRATIONS)
    return service_database_urls


def role_of(dsn: str) -> str:
    return urlsplit(dsn).username or ""


async def test_the_stack_has_a_role_per_service(stack: Stack) -> None:
    assert set(stack.service_dsns) == {"publisher", "counter"}, "make up exports BLOG_<SVC>_DSN"
    for service, dsn in stack.service_dsns.items():
        connection = await asyncpg.connect(dsn)
        try:
            owner = await connection.fetchval(
                "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1", service
            )
            assert owner == role_of(dsn) == service
            other = "counter" if service == "publisher" else "publisher"
            assert not await connection.fetchval("SELECT has_schema_privilege($1, 'USAGE')", other)
            assert not await connection.fetchval(
                "SELECT has_database_privilege(current_database(), 'CREATE')"
            )
            assert not await connection.fetchval(
                "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles"
                " WHERE rolname = current_user"
            )
        finally:
            await connection.close()


async def test_migrations_run_as_the_owning_role(migrated: dict[str, str]) -> None:
    for service, dsn in migrated.items():
        connection = await asyncpg.connect(dsn)
        try:
            owners = await connection.fetch(
                "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = $1", service
            )
        finally:
            await connection.close()
        assert [row["tableowner"] for row in owners] == [role_of(dsn)]


async def test_the_counter_cannot_read_the_publishers_schema(migrated: dict[str, str]) -> None:
    connection = await asyncpg.connect(migrated["counter"])
    try:
        # The token hashes above all.
        for table in ("api_tokens", "authors", "blogs", "outbox"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await connection.fetch(f"SELECT * FROM publisher.{table} LIMIT 1")
        # Its own schema works.
        assert await connection.fetchval("SELECT count(*) FROM counter.author_stats") == 0
    finally:
        await connection.close()


async def test_the_publisher_cannot_write_the_counters_schema(migrated: dict[str, str]) -> None:
    connection = await asyncpg.connect(migrated["publisher"])
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await connection.execute(
                "INSERT INTO counter.author_stats (author_id, total_blogs)"
                " VALUES (gen_random_uuid(), 1)"
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await connection.execute("DELETE FROM counter.blog_state")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await connection.execute("CREATE TABLE counter.intruder (x int)")
        assert await connection.fetchval("SELECT count(*) FROM publisher.authors") == 0
    finally:
        await connection.close()

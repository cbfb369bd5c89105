"""The services' migrations run as a role that owns its schema but may not create schemas, as
the CNPG bootstrap of deploy/k8s/platform/postgres.yaml sets the roles up (schema created for
the role beforehand, no CREATE on the database): the charts' hook Jobs then succeed."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from counter.app import MIGRATIONS_DIR as COUNTER_MIGRATIONS
from counter.app import SCHEMA as COUNTER_SCHEMA
from publisher.app import MIGRATIONS_DIR as PUBLISHER_MIGRATIONS
from publisher.app import SCHEMA as PUBLISHER_SCHEMA
from service_kit.migrations import apply_migrations

pytestmark = pytest.mark.integration

# Every migration file of each schema, in the order they apply.
MIGRATION_FILES = {
    schema: sorted(path.name for path in Path(folder).glob("*.sql"))
    for schema, folder in (
        (PUBLISHER_SCHEMA, PUBLISHER_MIGRATIONS),
        (COUNTER_SCHEMA, COUNTER_MIGRATIONS),
    )
}


async def test_migrations_need_no_create_on_the_database(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        for schema in (PUBLISHER_SCHEMA, COUNTER_SCHEMA):
            await connection.execute(f"CREATE SCHEMA {schema}")
        database = await connection.fetchval("SELECT current_database()")
        await connection.execute(f'REVOKE CREATE ON DATABASE "{database}" FROM CURRENT_USER')
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute("CREATE SCHEMA IF NOT EXISTS counter")
    finally:
        await connection.close()

    for schema, migrations in (
        (PUBLISHER_SCHEMA, PUBLISHER_MIGRATIONS),
        (COUNTER_SCHEMA, COUNTER_MIGRATIONS),
    ):
        assert await apply_migrations(database_url, schema, migrations) == MIGRATION_FILES[schema]
    # Again: nothing to apply, and still no CREATE needed.
    assert await apply_migrations(database_url, COUNTER_SCHEMA, COUNTER_MIGRATIONS) == []

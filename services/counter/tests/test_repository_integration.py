"""The batch transaction against a real PostgreSQL: version guard, author deltas, and what
happens when two consumers write the same rows at once (as during a rebalance)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from blog_testkit import wait_until
from counter import repository
from counter.app import MIGRATIONS_DIR, SCHEMA
from counter.counting import BlogChange
from service_kit.migrations import apply_migrations

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    await apply_migrations(database_url, SCHEMA, MIGRATIONS_DIR)
    async with asyncpg.create_pool(database_url, min_size=1, max_size=8) as created:
        yield created


def change(blog_id: uuid.UUID, author_id: uuid.UUID, version: int, live: bool) -> BlogChange:
    return BlogChange(blog_id, author_id, version, live, uuid.uuid4())


async def test_migrations_apply_once(database_url: str) -> None:
    assert await apply_migrations(database_url, SCHEMA, MIGRATIONS_DIR) == ["001_init.sql"]
    assert await apply_migrations(database_url, SCHEMA, MIGRATIONS_DIR) == []


async def test_newer_versions_apply_and_older_ones_change_nothing(pool: asyncpg.Pool) -> None:
    author, blog, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await repository.apply_changes(
        pool, {blog: change(blog, author, 1, True), other: change(other, author, 1, True)}
    )
    assert await repository.author_total(pool, author) == 2

    deleted = change(blog, author, 2, False)
    plan = await repository.apply_changes(pool, {blog: deleted})
    assert plan.author_deltas == {author: -1}
    assert await repository.author_total(pool, author) == 1

    replayed = await repository.apply_changes(
        pool, {blog: change(blog, author, 1, True), other: change(other, author, 1, True)}
    )
    assert replayed.changes == ()
    assert replayed.stale == 2
    assert await repository.author_total(pool, author) == 1
    row = await pool.fetchrow(
        "SELECT version, live, applied_event_id FROM counter.blog_state WHERE blog_id = $1", blog
    )
    assert row is not None
    assert (row["version"], row["live"], row["applied_event_id"]) == (2, False, deleted.event_id)


async def test_unknown_author_has_zero_blogs(pool: asyncpg.Pool) -> None:
    assert await repository.author_total(pool, uuid.uuid4()) == 0


async def test_concurrent_batches_for_one_author_lose_no_update(pool: asyncpg.Pool) -> None:
    """Different partitions carry different blogs of the same author; instances apply them in
    parallel transactions, which must serialise on the author row, not overwrite each other."""
    authors = [uuid.uuid4() for _ in range(3)]
    batches = [
        {
            blog: change(blog, authors[(n + i) % 3], 1, True)
            for i, blog in enumerate(uuid.uuid4() for _ in range(10))
        }
        for n in range(12)
    ]
    await asyncio.gather(*(repository.apply_changes(pool, batch) for batch in batches))
    totals = [await repository.author_total(pool, author) for author in authors]
    assert sum(totals) == 120
    assert totals == [40, 40, 40]


@pytest.mark.parametrize(
    ("batch_version", "why"),
    [
        # Same version: the version guard refuses the write.
        (1, "1 guarded"),
        # A newer version: the upsert updates instead of inserting, so the author would be
        # counted from a wrong "before".
        (2, "1 created concurrently"),
    ],
)
async def test_blog_created_by_another_transaction_meanwhile_rolls_back_the_batch(
    pool: asyncpg.Pool, database_url: str, batch_version: int, why: str
) -> None:
    """A zombie consumer inserts version 1 of a new blog while this batch, which read the blog
    as absent, runs: the batch must not count it a second time; it rolls back, and its retry
    finds the row and counts the blog once."""
    author, blog = uuid.uuid4(), uuid.uuid4()
    zombie = await asyncpg.connect(database_url)
    try:
        zombie_tx = zombie.transaction()
        await zombie_tx.start()
        await zombie.execute(
            "INSERT INTO counter.blog_state (blog_id, author_id, version, live)"
            " VALUES ($1, $2, 1, true)",
            blog,
            author,
        )
        await zombie.execute(
            "INSERT INTO counter.author_stats (author_id, total_blogs) VALUES ($1, 1)", author
        )
        batch = asyncio.create_task(
            repository.apply_changes(pool, {blog: change(blog, author, batch_version, True)})
        )

        async def batch_waits_on_zombie() -> bool:
            waiting: int = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return waiting > 0

        await wait_until(batch_waits_on_zombie, timeout=10, what="batch blocked by the zombie")
        await zombie_tx.commit()
        with pytest.raises(repository.ConcurrentBlogWrite, match=why):
            await batch
    finally:
        await zombie.close()

    retried = await repository.apply_changes(
        pool, {blog: change(blog, author, batch_version, True)}
    )
    assert len(retried.changes) == batch_version - 1  # version 1 is already there
    assert await repository.author_total(pool, author) == 1
    version = await pool.fetchval("SELECT version FROM counter.blog_state WHERE blog_id = $1", blog)
    assert version == batch_version

"""PostgreSQL access for schema `counter`: one transaction per batch, set-based statements."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from counter.counting import BatchPlan, BlogChange, StoredBlog, plan_batch


@dataclass(frozen=True)
class Tables:
    """The two tables a set of counts lives in: the live ones, or a rebuild's shadow copies
    (`counter.rebuild`). Names are fixed by code, never taken from input."""

    blog_state: str = "counter.blog_state"
    author_stats: str = "counter.author_stats"


LIVE_TABLES = Tables()

DbConnection = asyncpg.Connection | PoolConnectionProxy

# ORDER BY + FOR UPDATE (rows are locked as the sort emits them): a blog's row cannot change
# under us until commit, and two batches touching the same rows lock them in the same order (no
# deadlock). The parameter's order does not matter.
_LOCK_BLOG_STATE = """
SELECT blog_id, author_id, version, live
FROM {blog_state}
WHERE blog_id = ANY($1::uuid[])
ORDER BY blog_id
FOR UPDATE
"""

# The version guard in the WHERE makes the statement itself refuse stale versions, whatever the
# caller computed. `xmax = 0` is true only for a row this statement inserted. `written` and
# `inserted` are counted in the database: one row back instead of one per blog (the caller only
# compares counts, see apply_in_transaction).
_UPSERT_BLOG_STATE = """
WITH written AS (
    INSERT INTO {blog_state} AS s (blog_id, author_id, version, live, applied_event_id,
                                   updated_at)
    SELECT c.blog_id, c.author_id, c.version, c.live, c.event_id, now()
    FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::bool[], $5::uuid[])
         AS c(blog_id, author_id, version, live, event_id)
    ORDER BY c.blog_id
    ON CONFLICT (blog_id) DO UPDATE
    SET author_id = EXCLUDED.author_id,
        version = EXCLUDED.version,
        live = EXCLUDED.live,
        applied_event_id = EXCLUDED.applied_event_id,
        updated_at = EXCLUDED.updated_at
    WHERE s.version < EXCLUDED.version
    RETURNING (s.xmax = 0) AS inserted
)
SELECT count(*) AS written, count(*) FILTER (WHERE inserted) AS inserted FROM written
"""

# Two steps because a CHECK constraint is tested on the proposed INSERT row before ON CONFLICT
# applies, so a negative delta cannot ride in an upsert. First make sure every author row exists
# and lock it, sorted so concurrent batches (other partitions, same author) lock in one order...
_LOCK_AUTHOR_ROWS = """
INSERT INTO {author_stats} AS a (author_id, total_blogs)
SELECT author_id, 0
FROM unnest($1::uuid[]) AS author_id
ORDER BY author_id
ON CONFLICT (author_id) DO UPDATE SET total_blogs = a.total_blogs
"""

# ...then add the deltas to rows this transaction already holds.
_ADD_TO_AUTHOR_TOTALS = """
UPDATE {author_stats} AS a
SET total_blogs = a.total_blogs + d.delta
FROM unnest($1::uuid[], $2::int[]) AS d(author_id, delta)
WHERE a.author_id = d.author_id
"""

# A rebuild's catch-up: blog rows only (the version guard alone keeps the newest), the totals
# counted once from them afterwards (`recount_authors`).
_RECOUNT_AUTHORS = """
INSERT INTO {author_stats} (author_id, total_blogs)
SELECT author_id, count(*) FILTER (WHERE live) FROM {blog_state} GROUP BY author_id
"""
_CLEAR_AUTHORS = "DELETE FROM {author_stats}"

_ALL_BLOG_STATE = "SELECT blog_id, author_id, version, live FROM {blog_state}"
_ALL_AUTHOR_STATS = "SELECT author_id, total_blogs FROM {author_stats}"

_AUTHOR_TOTAL = "SELECT total_blogs FROM counter.author_stats WHERE author_id = $1"


@cache
def _sql(template: str, tables: Tables) -> str:
    return template.format(blog_state=tables.blog_state, author_stats=tables.author_stats)


class ConcurrentBlogWrite(RuntimeError):
    """Another transaction created a blog row this batch had read as absent (possible only while
    two consumers briefly own one partition during a rebalance). The batch is rolled back and the
    consumer retries it; the retry reads and locks the row."""


async def apply_changes(
    pool: asyncpg.Pool, newest: Mapping[uuid.UUID, BlogChange], tables: Tables = LIVE_TABLES
) -> BatchPlan:
    """Apply one batch's newest change per blog in ONE transaction: lock and read the stored
    state, keep only newer versions, upsert the blog rows and add the per-author deltas."""
    async with pool.acquire() as connection, connection.transaction():
        return await apply_in_transaction(connection, newest, tables)


async def apply_in_transaction(
    connection: DbConnection,
    newest: Mapping[uuid.UUID, BlogChange],
    tables: Tables = LIVE_TABLES,
) -> BatchPlan:
    """`apply_changes` inside the caller's transaction (a rebuild's swap)."""
    rows = await connection.fetch(_sql(_LOCK_BLOG_STATE, tables), list(newest))
    stored = {
        row["blog_id"]: StoredBlog(row["author_id"], row["version"], row["live"]) for row in rows
    }
    plan = plan_batch(newest, stored)
    if not plan.changes:
        return plan
    counts = await connection.fetchrow(
        _sql(_UPSERT_BLOG_STATE, tables),
        [c.blog_id for c in plan.changes],
        [c.author_id for c in plan.changes],
        [c.version for c in plan.changes],
        [c.live for c in plan.changes],
        [c.event_id for c in plan.changes],
    )
    assert counts is not None  # an aggregate always returns its row
    # Every planned change must be written, and inserted exactly when its row was absent. The
    # rows read above are locked, so a present row cannot be inserted: comparing the counts is
    # comparing the sets (fewer inserts = a row created by another transaction meanwhile).
    expected_inserts = sum(1 for c in plan.changes if c.blog_id not in stored)
    written, inserted = counts["written"], counts["inserted"]
    if written != len(plan.changes) or inserted != expected_inserts:
        raise ConcurrentBlogWrite(
            f"{len(plan.changes) - written} guarded, "
            f"{expected_inserts - inserted} created concurrently; retrying the batch"
        )
    if plan.author_deltas:
        authors = list(plan.author_deltas)
        await connection.execute(_sql(_LOCK_AUTHOR_ROWS, tables), authors)
        await connection.execute(
            _sql(_ADD_TO_AUTHOR_TOTALS, tables), authors, list(plan.author_deltas.values())
        )
    return plan


async def upsert_blog_states(
    connection: DbConnection, newest: Mapping[uuid.UUID, BlogChange], tables: Tables
) -> None:
    """Blog rows only, newer versions only; the caller recounts the totals before they are read
    (a rebuild's shadow tables, which nothing else writes)."""
    ordered = list(newest.values())  # the statement sorts them
    await connection.execute(
        _sql(_UPSERT_BLOG_STATE, tables),
        [c.blog_id for c in ordered],
        [c.author_id for c in ordered],
        [c.version for c in ordered],
        [c.live for c in ordered],
        [c.event_id for c in ordered],
    )


async def recount_authors(connection: DbConnection, tables: Tables) -> None:
    """Every author's total from the blog rows (in the caller's transaction)."""
    await connection.execute(_sql(_CLEAR_AUTHORS, tables))
    await connection.execute(_sql(_RECOUNT_AUTHORS, tables))


async def read_all(
    connection: DbConnection, tables: Tables = LIVE_TABLES
) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """Every blog row and every author row (`verify`); the caller picks the isolation."""
    blogs = await connection.fetch(_sql(_ALL_BLOG_STATE, tables))
    authors = await connection.fetch(_sql(_ALL_AUTHOR_STATS, tables))
    return blogs, authors


async def author_total(pool: asyncpg.Pool, author_id: uuid.UUID) -> int:
    """An author nobody has counted yet has 0 blogs."""
    total: int | None = await pool.fetchval(_AUTHOR_TOTAL, author_id)
    return total or 0


async def ping(pool: asyncpg.Pool) -> None:
    await pool.fetchval("SELECT 1")

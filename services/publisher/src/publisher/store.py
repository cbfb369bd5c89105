"""Blog writes as units of work: each write changes the blog row and inserts its event into the
outbox in ONE transaction, so an event exists exactly when its change does."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from asyncpg.pool import PoolAcquireContext

from blog_events import encode_event
from publisher.auth import DbConnection
from publisher.errors import (
    BlogNotFoundError,
    InvalidCursorError,
    NotBlogAuthorError,
    VersionMismatchError,
)
from publisher.events import envelope_for
from publisher.models import BlogDraft
from publisher.preconditions import IfMatch
from service_kit import tracing
from service_kit.logs import bind_log_fields

__all__ = [
    "Blog",
    "BlogNotFoundError",
    "BlogStore",
    "InvalidCursorError",
    "NotBlogAuthorError",
    "PageCursor",
    "VersionMismatchError",
]


@dataclass(frozen=True)
class Blog:
    """A row of publisher.blogs (queries select `*`; fields are read by name)."""

    id: uuid.UUID
    author_id: uuid.UUID
    title: str
    body: str
    tags: list[str]
    version: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record | None) -> Blog:
        # Only called where the statement always returns the row (INSERT/UPDATE ... RETURNING of
        # a row locked just before, or after a None check).
        assert row is not None
        return cls(
            id=row["id"],
            author_id=row["author_id"],
            title=row["title"],
            body=row["body"],
            tags=list(row["tags"]),
            version=row["version"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            deleted_at=row["deleted_at"],
        )


@dataclass(frozen=True)
class PageCursor:
    """Position after the last blog of a page (newest-first order is created_at DESC, id DESC)."""

    created_at: datetime
    blog_id: uuid.UUID

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), str(self.blog_id)]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> PageCursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            created_at, blog_id = json.loads(raw)
            if not isinstance(created_at, str) or not isinstance(blog_id, str):
                raise InvalidCursorError("invalid cursor")
            moment = datetime.fromisoformat(created_at)
            if moment.tzinfo is None:
                raise InvalidCursorError("invalid cursor")
            # In UTC, so an edge-of-range time with an offset fails here, not in the driver.
            return cls(moment.astimezone(UTC), uuid.UUID(blog_id))
        except (binascii.Error, ValueError, TypeError, OverflowError) as exc:
            raise InvalidCursorError("invalid cursor") from exc


# Each subquery matches one partial index's predicate (migrations 002): outbox_unsent_idx
# (sent_at IS NULL AND parked_at IS NULL) and outbox_parked_idx (parked_at IS NOT NULL).
OUTBOX_HEALTH_QUERY = (
    "SELECT"
    " (SELECT count(*) FROM publisher.outbox"
    "   WHERE sent_at IS NULL AND parked_at IS NULL) AS unsent,"
    " (SELECT extract(epoch FROM clock_timestamp() - created_at) FROM publisher.outbox"
    "   WHERE sent_at IS NULL AND parked_at IS NULL ORDER BY id LIMIT 1) AS oldest_age_s,"
    " (SELECT count(*) FROM publisher.outbox"
    "   WHERE parked_at IS NOT NULL AND sent_at IS NULL) AS parked"
)


@dataclass(frozen=True)
class OutboxHealth:
    unsent: int
    oldest_unsent_age_s: float  # 0 when nothing is unsent
    parked: int


class BlogStore:
    def __init__(self, pool: asyncpg.Pool, topic: str, timeout_s: float) -> None:
        self._pool = pool
        self._topic = topic
        self._timeout_s = timeout_s

    def connection(self) -> PoolAcquireContext:
        """A pool connection for one request's statements (`async with store.connection()`)."""
        return self._pool.acquire(timeout=self._timeout_s)

    async def create(self, conn: DbConnection, author_id: uuid.UUID, draft: BlogDraft) -> Blog:
        # The row's timestamps and the event are made here, so the blog row and its outbox row
        # go in ONE statement: one round trip, atomic without BEGIN/COMMIT (a statement is its
        # own transaction, or part of the caller's; the CTE's insert runs exactly once even
        # though nothing reads it).
        now = datetime.now(UTC)
        blog = Blog(
            id=uuid.uuid4(),
            author_id=author_id,
            title=draft.title,
            body=draft.body,
            tags=list(draft.tags),
            version=1,
            created_at=now,
            updated_at=now,
            deleted_at=None,
        )
        envelope = envelope_for(blog)
        bind_log_fields(blog_id=blog.id, event_id=envelope.event_id)
        await conn.execute(
            "WITH blog AS ("
            " INSERT INTO publisher.blogs"
            " (id, author_id, title, body, tags, version, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $7))"
            " INSERT INTO publisher.outbox"
            " (event_id, blog_id, version, topic, key, payload, traceparent)"
            " VALUES ($8, $1, $6, $9, $10, $11, $12)",
            blog.id,
            blog.author_id,
            blog.title,
            blog.body,
            blog.tags,
            blog.version,
            blog.created_at,
            envelope.event_id,
            self._topic,
            envelope.key,
            encode_event(envelope),
            # The request's trace context (None with tracing off): the relay sends the event
            # in it, as the record's traceparent header.
            tracing.current_traceparent(),
        )
        return blog

    async def replace(
        self,
        conn: DbConnection,
        blog_id: uuid.UUID,
        author_id: uuid.UUID,
        draft: BlogDraft,
        if_match: IfMatch | None = None,
    ) -> Blog:
        async with conn.transaction():
            await self._lock_own_live_blog(conn, blog_id, author_id, if_match)
            row = await conn.fetchrow(
                "UPDATE publisher.blogs SET title = $2, body = $3, tags = $4,"
                " version = version + 1, updated_at = now()"
                " WHERE id = $1 RETURNING *",
                blog_id,
                draft.title,
                draft.body,
                draft.tags,
            )
            return await self._append_event(conn, Blog.from_row(row))

    async def delete(
        self,
        conn: DbConnection,
        blog_id: uuid.UUID,
        author_id: uuid.UUID,
        if_match: IfMatch | None = None,
    ) -> Blog:
        async with conn.transaction():
            await self._lock_own_live_blog(conn, blog_id, author_id, if_match)
            row = await conn.fetchrow(
                "UPDATE publisher.blogs SET version = version + 1, deleted_at = now(),"
                " updated_at = now() WHERE id = $1 RETURNING *",
                blog_id,
            )
            return await self._append_event(conn, Blog.from_row(row))

    async def get(self, blog_id: uuid.UUID, *, include_deleted: bool = False) -> Blog | None:
        async with self._pool.acquire(timeout=self._timeout_s) as conn:
            row = await conn.fetchrow("SELECT * FROM publisher.blogs WHERE id = $1", blog_id)
        if row is None:
            return None
        blog = Blog.from_row(row)
        if blog.deleted_at is not None and not include_deleted:
            return None
        return blog

    async def list_by_author(
        self, author_id: uuid.UUID, limit: int, cursor: PageCursor | None
    ) -> tuple[list[Blog], PageCursor | None]:
        """One page of the author's live blogs, newest first, and the cursor of the next page."""
        async with self._pool.acquire(timeout=self._timeout_s) as conn:
            if cursor is None:
                rows = await conn.fetch(
                    "SELECT * FROM publisher.blogs"
                    " WHERE author_id = $1 AND deleted_at IS NULL"
                    " ORDER BY created_at DESC, id DESC LIMIT $2",
                    author_id,
                    limit + 1,
                )
            else:
                rows = await conn.fetch(
                    "SELECT * FROM publisher.blogs"
                    " WHERE author_id = $1 AND deleted_at IS NULL"
                    " AND (created_at, id) < ($2, $3)"
                    " ORDER BY created_at DESC, id DESC LIMIT $4",
                    author_id,
                    cursor.created_at,
                    cursor.blog_id,
                    limit + 1,
                )
        blogs = [Blog.from_row(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = blogs[-1]
            next_cursor = PageCursor(last.created_at, last.id)
        return blogs, next_cursor

    async def event_position(self, blog_id: uuid.UUID, version: int) -> tuple[int, int] | None:
        """(partition, offset) of the blog version's event once relayed, else None."""
        async with self._pool.acquire(timeout=self._timeout_s) as conn:
            row = await conn.fetchrow(
                "SELECT kafka_partition, kafka_offset FROM publisher.outbox"
                " WHERE blog_id = $1 AND version = $2 AND sent_at IS NOT NULL"
                " ORDER BY id DESC LIMIT 1",
                blog_id,
                version,
            )
        if row is None:
            return None
        return row["kafka_partition"], row["kafka_offset"]

    async def _lock_own_live_blog(
        self,
        conn: DbConnection,
        blog_id: uuid.UUID,
        author_id: uuid.UUID,
        if_match: IfMatch | None,
    ) -> None:
        # FOR UPDATE serialises writers of one blog, so concurrent updates get consecutive
        # versions and their outbox rows are inserted (hence relayed) in version order; and
        # If-Match is checked against the version no one else can change before our commit.
        row = await conn.fetchrow(
            "SELECT author_id, version, deleted_at FROM publisher.blogs WHERE id = $1 FOR UPDATE",
            blog_id,
        )
        if row is None or row["deleted_at"] is not None:
            raise BlogNotFoundError(str(blog_id))
        if row["author_id"] != author_id:
            raise NotBlogAuthorError(str(blog_id))
        if if_match is not None and not if_match.matches(row["version"]):
            raise VersionMismatchError(row["version"], if_match.header)

    async def _append_event(self, conn: DbConnection, blog: Blog) -> Blog:
        """The blog's event (derived from its new state) into the outbox."""
        envelope = envelope_for(blog)
        bind_log_fields(blog_id=blog.id, event_id=envelope.event_id)
        await conn.execute(
            "INSERT INTO publisher.outbox"
            " (event_id, blog_id, version, topic, key, payload, traceparent)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            envelope.event_id,
            blog.id,
            blog.version,
            self._topic,
            envelope.key,
            encode_event(envelope),
            tracing.current_traceparent(),
        )
        return blog

    async def outbox_health(self) -> OutboxHealth:
        """Unsent rows, the age of the oldest one, and parked rows: each an index-backed lookup
        (the partial indexes on unsent and on parked rows), so the cost follows the backlog, not
        the table. The age is the database's clock minus the lowest unsent id's created_at."""
        async with self._pool.acquire(timeout=self._timeout_s) as conn:
            row = await conn.fetchrow(OUTBOX_HEALTH_QUERY, timeout=self._timeout_s)
        assert row is not None
        return OutboxHealth(row["unsent"], float(row["oldest_age_s"] or 0.0), row["parked"])

    async def ping(self) -> None:
        async with self._pool.acquire(timeout=self._timeout_s) as conn:
            await conn.fetchval("SELECT 1", timeout=self._timeout_s)

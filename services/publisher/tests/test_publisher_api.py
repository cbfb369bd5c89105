"""The HTTP API against a real PostgreSQL (relay off: Kafka is not involved)."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest

from blog_events import BlogPublished, BlogUpdated, decode_event
from blog_testkit import free_port, wait_until
from publisher.auth import revoke_token
from publisher.store import BlogStore

from .conftest import PublisherFactory, RunningPublisher, draft, new_author

pytestmark = pytest.mark.integration


async def test_missing_bad_and_revoked_tokens_are_401(
    publisher_factory: PublisherFactory, database_url: str, db: asyncpg.Connection
) -> None:
    async with publisher_factory(token_cache_ttl_s=0) as publisher:  # no cache: refused at once
        author = await new_author(database_url)
        client = publisher.client
        for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic x"}):
            response = await client.post("/blogs", json=draft(), headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        response = await client.post("/blogs", json=draft(), headers=author.headers)
        assert response.status_code == 202
        assert await revoke_token(db, author.token)
        response = await client.post("/blogs", json=draft(), headers=author.headers)
        assert response.status_code == 401
    assert await db.fetchval("SELECT count(*) FROM publisher.blogs") == 1


async def test_a_revoked_token_is_refused_within_the_token_cache_ttl(
    publisher_factory: PublisherFactory, database_url: str, db: asyncpg.Connection
) -> None:
    ttl_s = 1.0
    async with publisher_factory(token_cache_ttl_s=ttl_s) as publisher:
        author = await new_author(database_url)
        other = await new_author(database_url, "other")
        client = publisher.client
        for headers in (author.headers, other.headers):
            assert (await client.post("/blogs", json=draft(), headers=headers)).status_code == 202
        # Both valid tokens are cached now.
        assert len(publisher.app.state.runtime.tokens) == 2
        assert await revoke_token(db, author.token)
        revoked_at = time.monotonic()
        statuses: list[int] = []

        async def refused() -> bool:
            response = await client.post("/blogs", json=draft(), headers=author.headers)
            statuses.append(response.status_code)
            return response.status_code == 401

        await wait_until(refused, timeout=ttl_s + 10, what="revoked token refused", interval=0.05)
        refused_after = time.monotonic() - revoked_at
        # Accepted only until its cache entry expired, refused from then on.
        assert set(statuses[:-1]) <= {202}
        assert statuses[-1] == 401
        assert refused_after <= ttl_s + 0.5, refused_after
        response = await client.post("/blogs", json=draft(), headers=author.headers)
        assert response.status_code == 401
        # The other author's token is unaffected.
        assert (await client.post("/blogs", json=draft(), headers=other.headers)).status_code == 202
    accepted = 3 + len(statuses) - 1
    assert await db.fetchval("SELECT count(*) FROM publisher.blogs") == accepted


async def test_post_writes_blog_and_outbox_row(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    author = await new_author(database_url)
    response = await publisher.client.post(
        "/blogs", json=draft("Title", "Body", ["a", "b"]), headers=author.headers
    )
    assert response.status_code == 202
    accepted = response.json()
    blog_id = uuid.UUID(accepted["id"])
    assert accepted["version"] == 1
    # Location is where to follow the write: its status URL.
    assert accepted["status_url"] == f"/blogs/{blog_id}/status?version=1"
    assert response.headers["Location"] == accepted["status_url"]
    assert response.headers["ETag"] == '"1"'

    blog = await db.fetchrow("SELECT * FROM publisher.blogs WHERE id = $1", blog_id)
    assert blog is not None
    assert blog["author_id"] == author.id
    assert (blog["title"], blog["body"], blog["tags"], blog["version"]) == (
        "Title",
        "Body",
        ["a", "b"],
        1,
    )
    rows = await db.fetch("SELECT * FROM publisher.outbox")
    assert len(rows) == 1
    row = rows[0]
    assert row["sent_at"] is None
    assert row["key"] == str(blog_id)
    assert row["topic"] == publisher.settings.topic
    envelope = decode_event(bytes(row["payload"]))
    assert envelope.event_id == row["event_id"]
    assert envelope.key == str(blog_id)
    payload = envelope.payload
    assert isinstance(payload, BlogPublished)
    assert (payload.blog_id, payload.author_id, payload.version) == (blog_id, author.id, 1)
    assert (payload.title, payload.body, payload.tags) == ("Title", "Body", ("a", "b"))

    got = await publisher.client.get(f"/blogs/{blog_id}")
    assert got.status_code == 200
    assert got.json()["title"] == "Title"


async def test_failed_outbox_insert_leaves_no_blog(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    """Blog row and outbox row are one unit of work: if the event cannot be recorded, the blog
    is not written either."""
    author = await new_author(database_url)
    await db.execute(
        "CREATE FUNCTION publisher.refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'outbox refused by test'; END; $$;"
        " CREATE TRIGGER refuse BEFORE INSERT ON publisher.outbox"
        " FOR EACH ROW EXECUTE FUNCTION publisher.refuse();"
    )
    response = await publisher.client.post("/blogs", json=draft(), headers=author.headers)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "internal server error",
        "instance": "/blogs",
    }
    assert await db.fetchval("SELECT count(*) FROM publisher.blogs") == 0
    assert await db.fetchval("SELECT count(*) FROM publisher.outbox") == 0


async def test_put_and_delete_of_another_authors_blog_are_403(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    owner = await new_author(database_url, "owner")
    other = await new_author(database_url, "other")
    client = publisher.client
    blog_id = (await client.post("/blogs", json=draft(), headers=owner.headers)).json()["id"]
    assert (
        await client.put(f"/blogs/{blog_id}", json=draft("x"), headers=other.headers)
    ).status_code == 403
    assert (await client.delete(f"/blogs/{blog_id}", headers=other.headers)).status_code == 403
    assert await db.fetchval("SELECT version FROM publisher.blogs") == 1
    assert await db.fetchval("SELECT count(*) FROM publisher.outbox") == 1


async def test_update_delete_and_404s(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    author = await new_author(database_url)
    client = publisher.client
    absent = uuid.uuid4()
    assert (await client.get(f"/blogs/{absent}")).status_code == 404
    assert (
        await client.put(f"/blogs/{absent}", json=draft(), headers=author.headers)
    ).status_code == 404
    assert (await client.delete(f"/blogs/{absent}", headers=author.headers)).status_code == 404

    blog_id = (await client.post("/blogs", json=draft(), headers=author.headers)).json()["id"]
    updated = await client.put(
        f"/blogs/{blog_id}", json=draft("New", "text", []), headers=author.headers
    )
    assert updated.status_code == 202
    assert updated.json()["version"] == 2
    got = (await client.get(f"/blogs/{blog_id}")).json()
    assert (got["title"], got["body"], got["tags"], got["version"]) == ("New", "text", [], 2)

    deleted = await client.delete(f"/blogs/{blog_id}", headers=author.headers)
    assert deleted.status_code == 202
    assert deleted.json()["version"] == 3
    assert (await client.get(f"/blogs/{blog_id}")).status_code == 404
    assert (
        await client.put(f"/blogs/{blog_id}", json=draft(), headers=author.headers)
    ).status_code == 404
    assert (await client.delete(f"/blogs/{blog_id}", headers=author.headers)).status_code == 404
    types = [
        decode_event(bytes(r["payload"])).event_type
        for r in await db.fetch("SELECT payload FROM publisher.outbox ORDER BY id")
    ]
    assert types == ["BlogPublished", "BlogUpdated", "BlogDeleted"]


async def test_validation_and_size_limits(
    publisher_factory: PublisherFactory, database_url: str, db: asyncpg.Connection
) -> None:
    async with publisher_factory(max_body_bytes=4096) as running:
        author = await new_author(database_url)
        client = running.client
        response = await client.post(
            "/blogs", json={**draft(), "author_id": str(uuid.uuid4())}, headers=author.headers
        )
        assert response.status_code == 422
        assert any(err["loc"][-1] == "author_id" for err in response.json()["errors"])

        response = await client.post(
            "/blogs", json=draft(tags=[f"t{i}" for i in range(11)]), headers=author.headers
        )
        assert response.status_code == 422
        assert response.json()["errors"][0]["loc"] == ["body", "tags"]

        response = await client.post(
            "/blogs",
            content=b'{"title": "x", ',
            headers={**author.headers, "Content-Type": "application/json"},
        )
        assert response.status_code == 422

        response = await client.post("/blogs", json=draft(body="x" * 5000), headers=author.headers)
        assert response.status_code == 413
    assert await db.fetchval("SELECT count(*) FROM publisher.blogs") == 0


async def test_concurrent_updates_get_consecutive_versions(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    author = await new_author(database_url)
    client = publisher.client
    blog_id = (await client.post("/blogs", json=draft(), headers=author.headers)).json()["id"]
    responses = await asyncio.gather(
        *(
            client.put(f"/blogs/{blog_id}", json=draft(f"v{i}"), headers=author.headers)
            for i in range(8)
        )
    )
    assert sorted(r.json()["version"] for r in responses) == list(range(2, 10))
    rows = await db.fetch("SELECT version, payload FROM publisher.outbox ORDER BY id")
    # Outbox (= relay) order is version order, and each event carries its version.
    assert [r["version"] for r in rows] == list(range(1, 10))
    for row in rows[1:]:
        payload = decode_event(bytes(row["payload"])).payload
        assert isinstance(payload, BlogUpdated)
        assert payload.version == row["version"]


async def test_list_by_author_is_paginated(publisher: RunningPublisher, database_url: str) -> None:
    author = await new_author(database_url, "a")
    other = await new_author(database_url, "b")
    client = publisher.client
    created = [
        (await client.post("/blogs", json=draft(f"t{i}"), headers=author.headers)).json()["id"]
        for i in range(5)
    ]
    await client.post("/blogs", json=draft(), headers=other.headers)
    await client.delete(f"/blogs/{created[0]}", headers=author.headers)

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"author": str(author.id), "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/blogs", params=params)).json()
        pages += 1
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 2
    assert seen == list(reversed(created[1:]))  # newest first, deleted one left out
    bad = await client.get("/blogs", params={"author": str(author.id), "cursor": "garbage"})
    assert bad.status_code == 422


async def test_database_unreachable_is_503_with_retry_after(
    publisher: RunningPublisher, database_url: str
) -> None:
    author = await new_author(database_url)
    rt = publisher.runtime
    # Point the store at a port where no PostgreSQL listens (min_size=0: no connect yet).
    dead_pool = await asyncpg.create_pool(
        f"postgresql://nobody@127.0.0.1:{free_port()}/none", min_size=0, max_size=1
    )
    original = rt.store
    rt.store = BlogStore(dead_pool, rt.settings.topic, 2.0)
    try:
        response = await publisher.client.post("/blogs", json=draft(), headers=author.headers)
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        assert (await publisher.client.get(f"/blogs/{uuid.uuid4()}")).status_code == 503
        ready = await publisher.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["database"] == "unreachable"
    finally:
        rt.store = original
        await dead_pool.close()
    assert (await publisher.client.get("/readyz")).status_code == 200

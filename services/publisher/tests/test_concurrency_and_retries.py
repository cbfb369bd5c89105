"""Optimistic concurrency (ETag / If-Match) and idempotent writes (Idempotency-Key) against the
real PostgreSQL: updates are never lost silently, retries never write twice."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from blog_testkit import wait_until
from publisher.idempotency import lock_key, purge_expired

from .conftest import RunningPublisher, draft, new_author

pytestmark = pytest.mark.integration

PROBLEM_JSON = "application/problem+json"


async def counts(db: asyncpg.Connection) -> tuple[int, int]:
    blogs: int = await db.fetchval("SELECT count(*) FROM publisher.blogs")
    events: int = await db.fetchval("SELECT count(*) FROM publisher.outbox")
    return blogs, events


async def create(publisher: RunningPublisher, headers: dict[str, str]) -> str:
    response = await publisher.client.post("/blogs", json=draft(), headers=headers)
    assert response.status_code == 202, response.text
    blog_id: str = response.json()["id"]
    return blog_id


# --- ETag / If-Match --------------------------------------------------------------------------


async def test_get_has_the_version_as_a_strong_etag_and_honours_if_none_match(
    publisher: RunningPublisher, database_url: str
) -> None:
    author = await new_author(database_url)
    blog_id = await create(publisher, author.headers)
    got = await publisher.client.get(f"/blogs/{blog_id}")
    assert got.headers["ETag"] == '"1"'
    not_modified = await publisher.client.get(f"/blogs/{blog_id}", headers={"If-None-Match": '"1"'})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    changed = await publisher.client.get(f"/blogs/{blog_id}", headers={"If-None-Match": '"0"'})
    assert changed.status_code == 200


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_if_match_makes_the_write_conditional(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection, method: str
) -> None:
    author = await new_author(database_url)
    blog_id = await create(publisher, author.headers)
    body = draft("edited") if method == "PUT" else None

    async def write(if_match: str | None) -> httpx.Response:
        headers = {**author.headers, **({"If-Match": if_match} if if_match is not None else {})}
        return await publisher.client.request(
            method, f"/blogs/{blog_id}", json=body, headers=headers
        )

    for stale in ('"2"', 'W/"1"', '"x", "0"', "1", ""):
        refused = await write(stale)
        assert refused.status_code == 412, (stale, refused.text)
        assert refused.headers["content-type"] == PROBLEM_JSON
        assert refused.headers["ETag"] == '"1"'
        problem = refused.json()
        assert problem["current_version"] == 1
        assert problem["type"] == "urn:blog-platform:problem:stale-version"
        assert problem["instance"] == f"/blogs/{blog_id}"
    assert await counts(db) == (1, 1)

    accepted = await write('"0", "1"')
    assert accepted.status_code == 202, accepted.text
    assert accepted.headers["ETag"] == '"2"'
    assert accepted.json()["version"] == 2
    assert await counts(db) == (1, 2)


async def test_without_if_match_and_with_a_star_the_write_is_accepted(
    publisher: RunningPublisher, database_url: str
) -> None:
    author = await new_author(database_url)
    blog_id = await create(publisher, author.headers)
    url = f"/blogs/{blog_id}"
    assert (await publisher.client.put(url, json=draft("a"), headers=author.headers)).json()[
        "version"
    ] == 2
    starred = await publisher.client.put(
        url, json=draft("b"), headers={**author.headers, "If-Match": "*"}
    )
    assert starred.json()["version"] == 3


async def test_two_concurrent_puts_with_the_same_if_match_one_wins_one_gets_412(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    author = await new_author(database_url)
    blog_id = await create(publisher, author.headers)
    etag = (await publisher.client.get(f"/blogs/{blog_id}")).headers["ETag"]

    # Both PUTs provably in flight at once: the test holds the blog row, both wait for it.
    blocker = await asyncpg.connect(database_url)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(
            "SELECT 1 FROM publisher.blogs WHERE id = $1 FOR UPDATE", uuid.UUID(blog_id)
        )
        puts = [
            asyncio.create_task(
                publisher.client.put(
                    f"/blogs/{blog_id}",
                    json=draft(f"writer {n}"),
                    headers={**author.headers, "If-Match": etag},
                )
            )
            for n in (1, 2)
        ]

        async def both_waiting() -> bool:
            waiting: int = await db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype IN"
                " ('tuple', 'transactionid')"
            )
            return waiting >= 2

        await wait_until(both_waiting, timeout=30, what="both PUTs waiting for the row")
        await transaction.rollback()
        responses = await asyncio.gather(*puts)
    finally:
        await blocker.close()

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202, 412], [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 202)
    loser = next(r for r in responses if r.status_code == 412)
    assert loser.json()["current_version"] == 2
    title = await db.fetchval("SELECT title FROM publisher.blogs")
    assert title == f"writer {1 if winner is responses[0] else 2}"
    assert await counts(db) == (1, 2)


# --- Idempotency-Key --------------------------------------------------------------------------


async def test_a_retried_post_gets_the_first_answer_and_writes_nothing(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    author = await new_author(database_url)
    headers = {**author.headers, "Idempotency-Key": '"retry-me-1"'}
    first = await publisher.client.post("/blogs", json=draft(), headers=headers)
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    # The same JSON written differently is the same request.
    again = await publisher.client.post(
        "/blogs",
        content=b'{"tags": ["intro"], "body": "world",   "title": "Hello"}',
        headers={**headers, "Content-Type": "application/json"},
    )
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"] == first.json()["status_url"]
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers["Idempotent-Replayed"] == "true"
    # A bare (unquoted) key is the same key.
    bare = await publisher.client.post(
        "/blogs", json=draft(), headers={**author.headers, "Idempotency-Key": "retry-me-1"}
    )
    assert bare.json() == first.json()
    assert await counts(db) == (1, 1)


async def test_the_same_key_for_another_request_is_422(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    author = await new_author(database_url)
    headers = {**author.headers, "Idempotency-Key": "k-422"}
    assert (await publisher.client.post("/blogs", json=draft(), headers=headers)).status_code == 202
    other = await publisher.client.post("/blogs", json=draft("other"), headers=headers)
    assert other.status_code == 422
    assert other.headers["content-type"] == PROBLEM_JSON
    assert other.json()["type"] == "urn:blog-platform:problem:idempotency-key-reused"
    assert await counts(db) == (1, 1)


async def test_a_request_in_flight_with_the_key_gets_409(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    author = await new_author(database_url)
    # The test plays the first request: it holds the key's lock in an open transaction.
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock($1)", lock_key(author.id, "busy"))
            response = await publisher.client.post(
                "/blogs", json=draft(), headers={**author.headers, "Idempotency-Key": "busy"}
            )
            assert response.status_code == 409
            assert response.json()["type"] == "urn:blog-platform:problem:idempotency-key-in-flight"
            assert int(response.headers["Retry-After"]) >= 1
    finally:
        await holder.close()
    assert await counts(db) == (0, 0)
    done = await publisher.client.post(
        "/blogs", json=draft(), headers={**author.headers, "Idempotency-Key": "busy"}
    )
    assert done.status_code == 202


async def test_concurrent_requests_with_one_key_write_once(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    author = await new_author(database_url)
    headers = {**author.headers, "Idempotency-Key": "burst"}
    responses = await asyncio.gather(
        *(publisher.client.post("/blogs", json=draft(), headers=headers) for _ in range(8))
    )
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {202, 409}
    ids = {r.json()["id"] for r in responses if r.status_code == 202}
    assert len(ids) == 1
    assert await counts(db) == (1, 1)


async def test_keys_are_per_author_and_expire(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    alice = await new_author(database_url, "alice")
    bob = await new_author(database_url, "bob")
    key = {"Idempotency-Key": "shared-key"}
    a = await publisher.client.post("/blogs", json=draft(), headers={**alice.headers, **key})
    b = await publisher.client.post("/blogs", json=draft(), headers={**bob.headers, **key})
    assert a.json()["id"] != b.json()["id"]
    assert await counts(db) == (2, 2)

    stored: Any = await db.fetchval(
        "SELECT expires_at - created_at FROM publisher.idempotency_keys LIMIT 1"
    )
    assert stored.total_seconds() == publisher.settings.idempotency_key_ttl_s == 24 * 3600
    # Expired: the key is free again (a new write), and the purge removes what is expired.
    await db.execute(
        "UPDATE publisher.idempotency_keys SET expires_at = now() - interval '1 second'"
        " WHERE author_id = $1",
        alice.id,
    )
    again = await publisher.client.post("/blogs", json=draft(), headers={**alice.headers, **key})
    assert again.json()["id"] != a.json()["id"]
    assert await counts(db) == (3, 3)
    await db.execute(
        "UPDATE publisher.idempotency_keys SET expires_at = now() - interval '1 second'"
    )
    assert await purge_expired(publisher.runtime.pool, 5.0) == 2
    assert await db.fetchval("SELECT count(*) FROM publisher.idempotency_keys") == 0


async def test_put_and_delete_retries_replay_instead_of_failing_their_precondition(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    author = await new_author(database_url)
    blog_id = await create(publisher, author.headers)
    put_headers = {**author.headers, "If-Match": '"1"', "Idempotency-Key": "put-1"}
    put = await publisher.client.put(f"/blogs/{blog_id}", json=draft("v2"), headers=put_headers)
    retried = await publisher.client.put(f"/blogs/{blog_id}", json=draft("v2"), headers=put_headers)
    assert (put.status_code, retried.status_code) == (202, 202)
    assert retried.json() == put.json()
    delete_headers = {**author.headers, "Idempotency-Key": "delete-1"}
    deleted = await publisher.client.delete(f"/blogs/{blog_id}", headers=delete_headers)
    retried = await publisher.client.delete(f"/blogs/{blog_id}", headers=delete_headers)
    assert (deleted.status_code, retried.status_code) == (202, 202)
    assert retried.json()["version"] == 3
    assert await counts(db) == (1, 3)


@pytest.mark.parametrize("key", ['""', "x" * 256, "naïve", "tab\there"])
async def test_an_invalid_key_is_400(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection, key: str
) -> None:
    author = await new_author(database_url)
    response = await publisher.client.post(
        "/blogs",
        json=draft(),
        # Raw bytes: a header value that is not ASCII has to reach the server as it is.
        headers=[
            *((name.encode(), value.encode()) for name, value in author.headers.items()),
            (b"Idempotency-Key", key.encode("utf-8")),
        ],
    )
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "urn:blog-platform:problem:invalid-idempotency-key"
    assert await counts(db) == (0, 0)

"""Bad HTTP input and security (issue 5, parts 5 and 6): every refusal has the right status and a
clear JSON message, nothing bad is stored, tokens are stored hashed, writes are rate limited."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from publisher.auth import revoke_token

from .conftest import PublisherFactory, RunningPublisher, draft, new_author

pytestmark = pytest.mark.integration

NOT_IDS = ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g", "' OR 1=1 --", "%00"]


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """An error answer, after checking it is an RFC 9457 problem with this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["type"]
    assert body["instance"] == response.request.url.path
    return body


def error_detail(response: httpx.Response, status: int) -> Any:
    """The `detail` of a problem; for a 422 its list of field `errors`."""
    body = problem(response, status)
    detail = body["errors"] if status == 422 else body["detail"]
    assert detail
    return detail


def invalid_fields(response: httpx.Response) -> list[tuple[Any, ...]]:
    """The `loc` of each field error of a 422 problem (`errors: [{loc, field, message, type}]`)."""
    errors = error_detail(response, 422)
    assert isinstance(errors, list)
    for err in errors:
        assert isinstance(err["message"], str)
        assert err["message"]
        assert err["field"] == ".".join(str(part) for part in err["loc"])
    return [tuple(err["loc"]) for err in errors]


async def blog_count(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM publisher.blogs")
    return count


# --- part 5: bad HTTP input -------------------------------------------------------------------


async def test_oversized_body_is_413_declared_or_streamed(
    publisher_factory: PublisherFactory, database_url: str, db: asyncpg.Connection
) -> None:
    async with publisher_factory(max_body_bytes=10_000) as running:
        author = await new_author(database_url)
        client = running.client
        response = await client.post(
            "/blogs", json=draft(body="x" * 20_000), headers=author.headers
        )
        assert "larger than 10000 bytes" in error_detail(response, 413)

        async def chunks() -> Any:  # no Content-Length: the limit must hold while streaming
            for _ in range(50):
                yield b"x" * 1000

        response = await client.put(
            f"/blogs/{uuid.uuid4()}",
            content=chunks(),
            headers={**author.headers, "Content-Type": "application/json"},
        )
        assert "larger than" in error_detail(response, 413)
        # Just under the limit is fine.
        response = await client.post("/blogs", json=draft(body="x" * 9_000), headers=author.headers)
        assert response.status_code == 202
    assert await blog_count(db) == 1


@pytest.mark.parametrize(
    "body",
    [b'{"title": "x", ', b"not json", b"", b"[1, 2", b'{"title": "t", "body": "b"}}', b"\x00"],
)
async def test_invalid_json_is_422_naming_the_body(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection, body: bytes
) -> None:
    author = await new_author(database_url)
    response = await publisher.client.post(
        "/blogs", content=body, headers={**author.headers, "Content-Type": "application/json"}
    )
    assert all(loc[0] == "body" for loc in invalid_fields(response))
    assert await blog_count(db) == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/merge-patch+json", None])
async def test_invalid_utf8_is_422_naming_the_body(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection, content_type: str | None
) -> None:
    author = await new_author(database_url)
    blog_id = (await publisher.client.post("/blogs", json=draft(), headers=author.headers)).json()[
        "id"
    ]
    headers = {**author.headers, **({"Content-Type": content_type} if content_type else {})}
    invalid = b'{"title": "caf\xe9", "body": "\xff\xfe", "tags": []}'
    for method, url in (("POST", "/blogs"), ("PUT", f"/blogs/{blog_id}")):
        response = await publisher.client.request(method, url, content=invalid, headers=headers)
        errors = error_detail(response, 422)
        assert errors[0]["loc"] == ["body"]
        assert "UTF-8" in errors[0]["message"]
    assert await blog_count(db) == 1
    assert await db.fetchval("SELECT version FROM publisher.blogs") == 1


async def test_absurdly_nested_json_is_400_with_a_message(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    """Nesting deeper than Python's JSON parser recurses is refused by FastAPI (400), not a
    crash: well inside the body limit, 100 000 levels."""
    author = await new_author(database_url)
    response = await publisher.client.post(
        "/blogs",
        content=b"[" * 100_000 + b"]" * 100_000,
        headers={**author.headers, "Content-Type": "application/json"},
    )
    assert error_detail(response, 400) == "There was an error parsing the body"
    assert await blog_count(db) == 0


async def test_non_json_content_type_is_422(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    author = await new_author(database_url)
    response = await publisher.client.post(
        "/blogs",
        content=b"title=x&body=y",
        headers={**author.headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert invalid_fields(response) == [("body",)]
    assert await blog_count(db) == 0


async def test_absurd_tag_lists_are_422_naming_the_tags(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    author = await new_author(database_url)
    client = publisher.client
    fifty = await client.post(
        "/blogs", json=draft(tags=[f"tag{i}" for i in range(50)]), headers=author.headers
    )
    assert invalid_fields(fifty) == [("body", "tags")]
    huge = await client.post(
        "/blogs", json=draft(tags=["ok", "t" * 10_000]), headers=author.headers
    )
    assert invalid_fields(huge) == [("body", "tags", 1)]
    for tags in ([""], [1], "tag", [["nested"]], [None]):
        response = await client.post(
            "/blogs", json={**draft(), "tags": tags}, headers=author.headers
        )
        assert invalid_fields(response)[0][:2] == ("body", "tags"), tags
    assert await blog_count(db) == 0


async def test_text_postgresql_cannot_store_is_422_not_500(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    """Found by fuzzing: JSON may carry NUL and lone surrogates, which PostgreSQL text and UTF-8
    cannot hold; they must be refused as input, not fail in the database."""
    author = await new_author(database_url)
    cases = [
        (b'{"title": "a\\u0000b", "body": "", "tags": []}', ("body", "title")),
        (b'{"title": "t", "body": "\\ud800", "tags": []}', ("body", "body")),
        (b'{"title": "t", "body": "", "tags": ["\\udfff"]}', ("body", "tags", 0)),
        # A field name that is not valid Unicode: the body as a whole is refused.
        (b'{"title": "t", "body": "", "\\ud800": 1}', ("body",)),
    ]
    for raw, field in cases:
        response = await publisher.client.post(
            "/blogs", content=raw, headers={**author.headers, "Content-Type": "application/json"}
        )
        assert invalid_fields(response) == [field]
    assert await blog_count(db) == 0


async def test_unknown_and_missing_fields_are_422_naming_them(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    author = await new_author(database_url)
    client = publisher.client
    blog_id = (await client.post("/blogs", json=draft(), headers=author.headers)).json()["id"]
    for extra in ({"author_id": str(uuid.uuid4())}, {"version": 99}, {"id": blog_id}):
        body = {**draft(), **extra}
        for method, url in (("POST", "/blogs"), ("PUT", f"/blogs/{blog_id}")):
            response = await client.request(method, url, json=body, headers=author.headers)
            assert invalid_fields(response) == [("body", *extra)], (method, extra)
    response = await client.post("/blogs", json={"body": "no title"}, headers=author.headers)
    assert invalid_fields(response) == [("body", "title")]
    response = await client.post("/blogs", json=["a", "list"], headers=author.headers)
    assert invalid_fields(response) == [("body",)]
    assert await db.fetchval("SELECT version FROM publisher.blogs") == 1
    assert await blog_count(db) == 1


@pytest.mark.parametrize("not_an_id", NOT_IDS)
async def test_path_ids_that_are_not_uuids_are_422(
    publisher: RunningPublisher, database_url: str, not_an_id: str
) -> None:
    author = await new_author(database_url)
    client = publisher.client
    for method, url, body in (
        ("GET", f"/blogs/{not_an_id}", None),
        ("GET", f"/blogs/{not_an_id}/status", None),
        ("PUT", f"/blogs/{not_an_id}", draft()),
        ("DELETE", f"/blogs/{not_an_id}", None),
    ):
        response = await client.request(method, url, json=body, headers=author.headers)
        assert invalid_fields(response) == [("path", "blog_id")], (method, url)
    response = await client.get("/blogs", params={"author": not_an_id})
    assert invalid_fields(response) == [("query", "author")]


async def test_bad_query_parameters_are_422_naming_them(
    publisher: RunningPublisher, database_url: str
) -> None:
    author = await new_author(database_url)
    client = publisher.client
    blog_id = (await client.post("/blogs", json=draft(), headers=author.headers)).json()["id"]
    listing = {"author": str(author.id)}
    for params, field in (
        ({**listing, "limit": "0"}, "limit"),
        ({**listing, "limit": "101"}, "limit"),
        ({**listing, "limit": "ten"}, "limit"),
        ({**listing, "cursor": "x" * 201}, "cursor"),
        ({**listing, "cursor": "bm90IGEgY3Vyc29y"}, "cursor"),  # base64 of "not a cursor"
        # base64 of '["2024-01-01T00:00:00+00:00", 5]': well-formed, wrong types.
        ({**listing, "cursor": "WyIyMDI0LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgNV0"}, "cursor"),
        ({}, "author"),
    ):
        assert invalid_fields(await client.get("/blogs", params=params)) == [("query", field)]
    for version in ("0", "-1", "v1", "1.5"):
        response = await client.get(f"/blogs/{blog_id}/status", params={"version": version})
        assert invalid_fields(response) == [("query", "version")]
    response = await client.get(f"/blogs/{blog_id}/status", params={"version": str(10**30)})
    assert error_detail(response, 404) == "blog version not found"


async def test_unknown_routes_and_methods_answer_problems(publisher: RunningPublisher) -> None:
    assert problem(await publisher.client.get("/nope"), 404)["title"] == "Not Found"
    assert problem(await publisher.client.patch("/blogs"), 405)["title"] == "Method Not Allowed"


# --- part 6: security --------------------------------------------------------------------------


async def test_every_write_needs_a_valid_unrevoked_token(
    publisher_factory: PublisherFactory, database_url: str, db: asyncpg.Connection
) -> None:
    async with publisher_factory(token_cache_ttl_s=0) as publisher:  # every request looks up
        await _every_write_needs_a_valid_unrevoked_token(publisher, database_url, db)


async def _every_write_needs_a_valid_unrevoked_token(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    author = await new_author(database_url)
    client = publisher.client
    blog_id = (await client.post("/blogs", json=draft(), headers=author.headers)).json()["id"]
    writes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/blogs", draft()),
        ("PUT", f"/blogs/{blog_id}", draft("x")),
        ("DELETE", f"/blogs/{blog_id}", None),
    ]
    bad_headers: list[dict[str, str]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Bearer {author.token}x"},
        {"Authorization": f"Basic {author.token}"},
        {"Authorization": f"Bearer {author.token} {author.token}"},
        {"Authorization": "Bearer " + "a" * 10_000},
    ]
    for headers in bad_headers:
        for method, url, body in writes:
            response = await client.request(method, url, json=body, headers=headers)
            assert error_detail(response, 401) == "missing, invalid or revoked bearer token"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await revoke_token(db, author.token)
    for method, url, body in writes:
        response = await client.request(method, url, json=body, headers=author.headers)
        assert error_detail(response, 401) == "missing, invalid or revoked bearer token"
    assert await blog_count(db) == 1
    assert await db.fetchval("SELECT version FROM publisher.blogs") == 1


async def test_another_authors_blog_is_403_on_put_and_delete(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    owner = await new_author(database_url, "owner")
    other = await new_author(database_url, "other")
    client = publisher.client
    blog_id = (await client.post("/blogs", json=draft(), headers=owner.headers)).json()["id"]
    put = await client.put(f"/blogs/{blog_id}", json=draft("hijack"), headers=other.headers)
    assert error_detail(put, 403) == "not the blog's author"
    delete = await client.delete(f"/blogs/{blog_id}", headers=other.headers)
    assert error_detail(delete, 403) == "not the blog's author"
    row = await db.fetchrow("SELECT title, version, deleted_at FROM publisher.blogs")
    assert row is not None
    assert (row["title"], row["version"], row["deleted_at"]) == ("Hello", 1, None)


async def test_tokens_are_stored_only_as_sha256(
    publisher: RunningPublisher, database_url: str, db: asyncpg.Connection
) -> None:
    author = await new_author(database_url)
    rows = await db.fetch("SELECT * FROM publisher.api_tokens")
    assert len(rows) == 1
    assert bytes(rows[0]["token_hash"]) == hashlib.sha256(author.token.encode()).digest()
    # The token itself is nowhere in the publisher's tables, in any column.
    dump = await db.fetchval(
        "SELECT string_agg(t::text, ' ') FROM ("
        " SELECT row_to_json(a)::text AS t FROM publisher.api_tokens a"
        " UNION ALL SELECT row_to_json(au)::text FROM publisher.authors au) rows"
    )
    assert author.token not in dump
    assert author.token.encode().hex() not in dump
    # And the stored hash is not itself a usable token.
    stolen = {"Authorization": f"Bearer {bytes(rows[0]['token_hash']).hex()}"}
    assert (await publisher.client.post("/blogs", json=draft(), headers=stolen)).status_code == 401


async def test_writes_over_the_rate_are_429_with_retry_after(
    publisher_factory: PublisherFactory, database_url: str, db: asyncpg.Connection
) -> None:
    async with publisher_factory(rate_limit_per_s=0.2, rate_limit_burst=3) as running:
        author = await new_author(database_url, "eager")
        other = await new_author(database_url, "calm")
        client = running.client
        accepted = [
            (await client.post("/blogs", json=draft(), headers=author.headers)).status_code
            for _ in range(3)
        ]
        assert accepted == [202, 202, 202]
        blog_id = str(await db.fetchval("SELECT id FROM publisher.blogs LIMIT 1"))
        for method, url, body in (
            ("POST", "/blogs", draft()),
            ("PUT", f"/blogs/{blog_id}", draft("x")),
            ("DELETE", f"/blogs/{blog_id}", None),
        ):
            response = await client.request(method, url, json=body, headers=author.headers)
            assert "rate limit" in error_detail(response, 429)
            # One token every 5 s: the wait is announced in whole seconds, never 0.
            assert 1 <= int(response.headers["Retry-After"]) <= 5
        # Per author: another author still writes; reads are never limited.
        assert (await client.post("/blogs", json=draft(), headers=other.headers)).status_code == 202
        for _ in range(5):
            assert (await client.get(f"/blogs/{blog_id}")).status_code == 200
        # Refused writes changed nothing; unauthenticated ones are 401, not 429.
        assert (await client.post("/blogs", json=draft())).status_code == 401
        metrics = (await client.get("/metrics")).text
        assert "publisher_rate_limited_writes_total 3.0" in metrics
    assert await blog_count(db) == 4
    assert await db.fetchval("SELECT max(version) FROM publisher.blogs") == 1


async def test_rate_limit_zero_turns_it_off(
    publisher_factory: PublisherFactory, database_url: str
) -> None:
    async with publisher_factory(rate_limit_per_s=0, rate_limit_burst=1) as running:
        author = await new_author(database_url)
        statuses = {
            (await running.client.post("/blogs", json=draft(), headers=author.headers)).status_code
            for _ in range(5)
        }
        assert statuses == {202}

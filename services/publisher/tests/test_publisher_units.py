"""Unit tests: pure logic, no stack needed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from blog_events.models import TAGS_MAX, TITLE_MAX
from publisher.auth import TokenCache, bearer_token, hash_token, new_token
from publisher.middleware import BodySizeLimitMiddleware
from publisher.models import BlogDraft
from publisher.settings import PublisherSettings
from publisher.store import InvalidCursorError, PageCursor


class TestBearerToken:
    def test_extracts_token(self) -> None:
        assert bearer_token("Bearer abc-DEF_123") == "abc-DEF_123"
        assert bearer_token("bearer  abc ") == "abc"

    @pytest.mark.parametrize(
        "header", [None, "", "Bearer", "Bearer ", "Basic abc", "Token abc", "Bearer a b"]
    )
    def test_rejects_missing_or_malformed(self, header: str | None) -> None:
        assert bearer_token(header) is None

    def test_rejects_absurdly_long_token(self) -> None:
        assert bearer_token("Bearer " + "a" * 201) is None


class TestTokens:
    def test_new_tokens_are_random_and_urlsafe(self) -> None:
        tokens = {new_token() for _ in range(100)}
        assert len(tokens) == 100
        assert all(len(t) >= 43 and all(c.isalnum() or c in "-_" for c in t) for t in tokens)

    def test_hash_is_sha256_and_deterministic(self) -> None:
        assert hash_token("abc") == hash_token("abc")
        assert hash_token("abc") != hash_token("abd")
        assert len(hash_token("abc")) == 32


class TestBlogDraft:
    def test_valid_draft(self) -> None:
        draft = BlogDraft.model_validate({"title": "t", "body": "", "tags": ["a", "b"]})
        assert draft.tags == ["a", "b"]

    def test_tags_default_to_empty(self) -> None:
        assert BlogDraft.model_validate({"title": "t", "body": "b"}).tags == []

    def test_unknown_field_is_rejected_by_name(self) -> None:
        with pytest.raises(ValidationError) as info:
            BlogDraft.model_validate({"title": "t", "body": "b", "author_id": str(uuid.uuid4())})
        assert [e["loc"] for e in info.value.errors()] == [("author_id",)]
        assert info.value.errors()[0]["type"] == "extra_forbidden"

    @pytest.mark.parametrize(
        ("payload", "field"),
        [
            ({"title": "", "body": "b"}, "title"),
            ({"title": "x" * (TITLE_MAX + 1), "body": "b"}, "title"),
            ({"title": "t", "body": "x" * 100_001}, "body"),
            ({"title": "t", "body": "b", "tags": [str(i) for i in range(TAGS_MAX + 1)]}, "tags"),
            ({"title": "t", "body": "b", "tags": [""]}, "tags"),
            ({"title": "t", "body": "b", "tags": ["x" * 41]}, "tags"),
            ({"body": "b"}, "title"),
        ],
    )
    def test_limits_match_the_event_contract(self, payload: dict[str, object], field: str) -> None:
        with pytest.raises(ValidationError) as info:
            BlogDraft.model_validate(payload)
        assert info.value.errors()[0]["loc"][0] == field


class TestPageCursor:
    def test_round_trip(self) -> None:
        cursor = PageCursor(datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC), uuid.uuid4())
        assert PageCursor.decode(cursor.encode()) == cursor

    @pytest.mark.parametrize("text", ["", "!!!", "bm90IGpzb24", "WzEsMl0", "WyJ4IiwgInkiXQ"])
    def test_garbage_is_rejected(self, text: str) -> None:
        with pytest.raises(InvalidCursorError):
            PageCursor.decode(text)


class TestSettings:
    def test_database_url_is_required(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("PUBLISHER_DATABASE_URL", raising=False)
        with pytest.raises(ValidationError):
            PublisherSettings()

    def test_defaults_and_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PUBLISHER_DATABASE_URL", "postgresql://x/y")
        monkeypatch.setenv("PUBLISHER_STATUS_GROUPS", '["a"]')
        settings = PublisherSettings()
        assert settings.max_body_bytes == 256 * 1024
        assert settings.relay_batch == 500
        assert settings.topic == "blog-events"
        assert settings.status_groups == ["a"]

    def test_bad_value_fails_fast(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PUBLISHER_DATABASE_URL", "postgresql://x/y")
        monkeypatch.setenv("PUBLISHER_PORT", "99999")
        with pytest.raises(ValidationError):
            PublisherSettings()


async def _echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    """A tiny ASGI app answering with the number of body bytes it received."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


class TestBodySizeLimit:
    @pytest.fixture
    def client(self) -> httpx.AsyncClient:
        app = BodySizeLimitMiddleware(_echo_length, max_bytes=10)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

    async def test_within_limit_passes_the_whole_body(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/", content=b"x" * 10)
        assert response.status_code == 200
        assert response.text == "10"

    async def test_declared_length_over_limit_is_413(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/", content=b"x" * 11)
        assert response.status_code == 413

    async def test_streamed_body_over_limit_is_413(self, client: httpx.AsyncClient) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b"xxxx"

        # A generator body is sent chunked, without Content-Length: bytes are counted.
        response = await client.post("/", content=chunks())
        assert response.status_code == 413


class _TokenTable:
    """`publisher.api_tokens` as `author_for_hash` reads it: counts the lookups."""

    def __init__(self) -> None:
        self.valid: dict[bytes, uuid.UUID] = {}
        self.lookups = 0

    async def fetchval(self, _query: str, token_hash: bytes) -> uuid.UUID | None:
        self.lookups += 1
        return self.valid.get(token_hash)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_token_cache_asks_once_per_ttl_and_honours_a_revocation_after_it() -> None:

    table, clock = _TokenTable(), _Clock()
    author = uuid.uuid4()
    table.valid[hash_token("t1")] = author
    cache = TokenCache(ttl_s=5, max_entries=10, clock=clock)
    conn: Any = table
    assert await cache.author_for_token(conn, "t1") == author
    clock.now += 4.9
    assert await cache.author_for_token(conn, "t1") == author
    assert table.lookups == 1
    del table.valid[hash_token("t1")]  # revoked
    clock.now += 0.1  # 5 s after the lookup: expired
    assert await cache.author_for_token(conn, "t1") is None
    assert table.lookups == 2
    assert len(cache) == 0


async def test_the_token_cache_keeps_no_unknown_token_and_stays_bounded() -> None:

    table, clock = _TokenTable(), _Clock()
    conn: Any = table
    cache = TokenCache(ttl_s=5, max_entries=3, clock=clock)
    for _ in range(3):
        assert await cache.author_for_token(conn, "unknown") is None
    assert table.lookups == 3
    assert len(cache) == 0
    for name in ("a", "b", "c", "d"):
        table.valid[hash_token(name)] = uuid.uuid4()
        await cache.author_for_token(conn, name)
    assert len(cache) == 3
    lookups = table.lookups
    await cache.author_for_token(conn, "a")  # the oldest, dropped for "d"
    await cache.author_for_token(conn, "d")
    assert table.lookups == lookups + 1


async def test_a_token_cache_ttl_of_zero_looks_up_every_time() -> None:

    table = _TokenTable()
    table.valid[hash_token("t")] = uuid.uuid4()
    conn: Any = table
    cache = TokenCache(ttl_s=0, max_entries=10)
    for _ in range(3):
        await cache.author_for_token(conn, "t")
    assert table.lookups == 3
    assert len(cache) == 0

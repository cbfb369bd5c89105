"""Unit tests of the hardening pieces: the write rate limiter, text validation and secrets in the
settings' representation."""

from __future__ import annotations

import asyncpg
import pytest
from pydantic import ValidationError

from publisher.models import BlogDraft
from publisher.ratelimit import PRUNE_ABOVE_BUCKETS, TokenBucketLimiter, retry_after_header
from publisher.settings import PublisherSettings
from service_kit.problems import printable


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestTokenBucketLimiter:
    def test_burst_then_refusal_with_wait_until_next_token(self) -> None:
        clock = FakeClock()
        limiter = TokenBucketLimiter(rate_per_s=2.0, burst=3, clock=clock)
        assert [limiter.acquire("a") for _ in range(3)] == [None, None, None]
        assert limiter.acquire("a") == pytest.approx(0.5)
        clock.now += 0.25
        assert limiter.acquire("a") == pytest.approx(0.25)  # a refusal takes no token
        clock.now += 0.25
        assert limiter.acquire("a") is None
        assert limiter.acquire("a") is not None

    def test_keys_are_independent(self) -> None:
        limiter = TokenBucketLimiter(rate_per_s=1.0, burst=1, clock=FakeClock())
        assert limiter.acquire("a") is None
        assert limiter.acquire("a") is not None
        assert limiter.acquire("b") is None

    def test_refill_is_capped_at_burst(self) -> None:
        clock = FakeClock()
        limiter = TokenBucketLimiter(rate_per_s=10.0, burst=2, clock=clock)
        limiter.acquire("a")
        clock.now += 3600
        assert [limiter.acquire("a") is None for _ in range(3)] == [True, True, False]

    def test_clock_going_backwards_grants_nothing(self) -> None:
        clock = FakeClock()
        limiter = TokenBucketLimiter(rate_per_s=1.0, burst=1, clock=clock)
        limiter.acquire("a")
        clock.now -= 100
        assert limiter.acquire("a") is not None

    def test_full_buckets_are_pruned_to_bound_memory(self) -> None:
        clock = FakeClock()
        limiter = TokenBucketLimiter(rate_per_s=1.0, burst=1, clock=clock)
        for n in range(PRUNE_ABOVE_BUCKETS):
            limiter.acquire(n)
        assert len(limiter) == PRUNE_ABOVE_BUCKETS
        clock.now += 0.5
        limiter.acquire("busy")  # nothing is full yet: nothing pruned
        assert len(limiter) == PRUNE_ABOVE_BUCKETS + 1
        clock.now += 0.5  # the first buckets are full again, "busy" is not
        limiter.acquire("newcomer")
        assert len(limiter) == 2
        assert limiter.acquire("busy") is not None  # kept: still empty, not reset to a burst

    def test_rejects_a_limit_that_means_off(self) -> None:
        with pytest.raises(ValueError, match="rate_per_s"):
            TokenBucketLimiter(rate_per_s=0, burst=1)


@pytest.mark.parametrize(
    ("wait_s", "header"), [(0.0, "1"), (0.001, "1"), (1.0, "1"), (1.01, "2"), (9.5, "10")]
)
def test_retry_after_is_whole_seconds_at_least_one(wait_s: float, header: str) -> None:
    assert retry_after_header(wait_s) == header


class TestStorableText:
    @pytest.mark.parametrize(
        ("field", "value"),
        [("title", "a\x00b"), ("body", "\ud800"), ("tags", ["ok", "x\x00"]), ("tags", ["\udfff"])],
    )
    def test_nul_and_lone_surrogates_are_rejected(self, field: str, value: object) -> None:
        draft = {"title": "t", "body": "b", "tags": [], field: value}
        with pytest.raises(ValidationError) as caught:
            BlogDraft.model_validate(draft)
        assert caught.value.errors()[0]["loc"][0] == field

    def test_any_other_unicode_is_accepted(self) -> None:
        text = "naïve 日本語 \U0001f600 \t\n\x7f"
        draft = BlogDraft.model_validate({"title": text, "body": text, "tags": ["é"]})
        assert draft.title == text


def test_error_locations_are_made_json_encodable() -> None:
    assert printable("tags") == "tags"
    assert printable(3) == 3
    assert printable("a\ud800") == "a\\ud800"
    assert str(printable("\udfff")).encode("utf-8") == b"\\udfff"


def test_settings_repr_hides_the_database_password() -> None:
    settings = PublisherSettings(database_url="postgresql://blog:s3cr3t-pw@127.0.0.1:5432/blog")
    assert "s3cr3t-pw" not in repr(settings)
    assert "s3cr3t-pw" not in str(settings)
    assert "s3cr3t-pw" not in settings.model_dump_json()
    assert settings.dsn == "postgresql://blog:s3cr3t-pw@127.0.0.1:5432/blog"


def test_rate_limit_settings_defaults_and_bounds() -> None:
    settings = PublisherSettings(database_url="postgresql://x@h/db")
    assert (settings.rate_limit_per_s, settings.rate_limit_burst) == (50.0, 100)
    with pytest.raises(ValidationError):
        PublisherSettings(database_url="postgresql://x@h/db", rate_limit_per_s=-1)
    with pytest.raises(ValidationError):
        PublisherSettings(database_url="postgresql://x@h/db", rate_limit_burst=0)


class _ConnectionFailing:
    """An asyncpg connection whose every statement fails with `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def add_termination_listener(self, _callback: object) -> None:
        pass

    async def fetchval(self, *_args: object, **_kwargs: object) -> object:
        raise self.error

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "error",
    [
        # What a statement meets when the server's FATAL (pg_terminate_backend) was read before
        # the socket's close: the protocol is stuck consuming the error (seen in CI).
        asyncpg.InternalClientError(
            "cannot switch to state 11; another operation (2) is in progress"
        ),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        ConnectionResetError("reset by peer"),
    ],
)
async def test_a_broken_connection_loses_the_lock_session(error: Exception) -> None:
    from publisher.relay_lock import LockSession, SessionLostError

    session = LockSession(_ConnectionFailing(error), idle_timeout_s=10, statement_timeout_s=10)  # type: ignore[arg-type]
    try:
        with pytest.raises(SessionLostError):
            await session.fetchval("SELECT 1")
        assert session.lost.is_set()
        with pytest.raises(SessionLostError):  # and stays lost: nothing more goes through it
            await session.fetchval("SELECT 1")
    finally:
        await session.close()

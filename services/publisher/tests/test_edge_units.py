"""Pure parts of the publisher's edge: ETag preconditions, Idempotency-Key parsing and request
fingerprints, and the one place events are derived from a blog's state."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from blog_events import BlogDeleted, BlogPublished, BlogUpdated
from publisher.errors import InvalidIdempotencyKeyError
from publisher.events import event_for
from publisher.idempotency import parse_key, request_fingerprint
from publisher.preconditions import etag, none_match, parse_if_match
from publisher.store import Blog

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def blog(version: int, deleted: bool = False) -> Blog:
    return Blog(
        id=uuid.uuid4(),
        author_id=uuid.uuid4(),
        title="t",
        body="b",
        tags=["x"],
        version=version,
        created_at=T0,
        updated_at=T0 + timedelta(minutes=version),
        deleted_at=T0 + timedelta(hours=1) if deleted else None,
    )


class TestPreconditions:
    def test_the_etag_is_the_quoted_version(self) -> None:
        assert etag(7) == '"7"'

    @pytest.mark.parametrize(
        ("header", "version", "matches"),
        [
            ('"3"', 3, True),
            ('"3"', 4, False),
            ('"1", "3"', 3, True),
            ('"1","3"', 3, True),
            ("*", 99, True),
            ('W/"3"', 3, False),  # If-Match compares strongly
            ("3", 3, False),  # not an entity tag
            ('"3', 3, False),
            ('"a,b", "3"', 3, True),  # commas inside a tag do not split it
            ('"99999999999999999999"', 3, False),
            ("", 3, False),
        ],
    )
    def test_if_match(self, header: str, version: int, matches: bool) -> None:
        parsed = parse_if_match(header)
        assert parsed is not None
        assert parsed.matches(version) is matches

    def test_absent_if_match_is_unconditional(self) -> None:
        assert parse_if_match(None) is None

    @pytest.mark.parametrize(
        ("header", "matches"),
        [('"2"', True), ('W/"2"', True), ('"1", "2"', True), ("*", True), ('"1"', False)],
    )
    def test_if_none_match_compares_weakly(self, header: str, matches: bool) -> None:
        assert none_match(header, 2) is matches
        assert none_match(None, 2) is False


class TestIdempotencyKey:
    @pytest.mark.parametrize(
        ("header", "key"),
        [
            ('"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
            ("plain-token", "plain-token"),
            ('"with \\"quotes\\""', 'with "quotes"'),
            ("  spaced  ", "spaced"),
        ],
    )
    def test_keys_are_structured_field_strings_or_bare(self, header: str, key: str) -> None:
        assert parse_key(header) == key

    @pytest.mark.parametrize("header", ['""', "", "x" * 256, "caf\u00e9", "a\tb"])
    def test_invalid_keys_are_refused(self, header: str) -> None:
        with pytest.raises(InvalidIdempotencyKeyError):
            parse_key(header)

    def test_no_header_no_key(self) -> None:
        assert parse_key(None) is None

    def test_the_fingerprint_covers_method_path_precondition_and_body(self) -> None:
        base = request_fingerprint("POST", "/blogs", None, b"{}")
        assert len(base) == 32
        assert base == request_fingerprint("post", "/blogs", None, b"{}")
        assert base != request_fingerprint("PUT", "/blogs", None, b"{}")
        assert base != request_fingerprint("POST", "/blogs/x", None, b"{}")
        assert base != request_fingerprint("POST", "/blogs", '"1"', b"{}")
        assert base != request_fingerprint("POST", "/blogs", None, b'{"a": 1}')


class TestEventFor:
    def test_version_one_is_a_publish(self) -> None:
        event = event_for(blog(1))
        assert isinstance(event, BlogPublished)
        assert (event.version, event.published_at, event.tags) == (1, T0, ("x",))

    def test_a_later_version_is_an_update(self) -> None:
        event = event_for(blog(4))
        assert isinstance(event, BlogUpdated)
        assert (event.version, event.updated_at) == (4, T0 + timedelta(minutes=4))

    def test_a_deleted_blog_is_a_delete(self) -> None:
        event = event_for(blog(5, deleted=True))
        assert isinstance(event, BlogDeleted)
        assert (event.version, event.deleted_at) == (5, T0 + timedelta(hours=1))

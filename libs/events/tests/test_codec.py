"""Round trips, forward compatibility (unknown fields ignored) and rejection of what consumers
cannot parse, always with a readable reason (it ends up in the DLQ's `dlq-reason` header)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from blog_events import (
    BlogDeleted,
    BlogPublished,
    BlogUpdated,
    Envelope,
    EventDecodeError,
    decode_event,
    encode_event,
    new_envelope,
)
from blog_events.models import TITLE_MAX

BLOG_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
AUTHOR_ID = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def published(**changes: Any) -> BlogPublished:
    fields: dict[str, Any] = {
        "blog_id": BLOG_ID,
        "author_id": AUTHOR_ID,
        "version": 1,
        "title": "Hello",
        "body": "First post",
        "tags": ("intro", "kafka"),
        "published_at": T0,
    }
    fields.update(changes)
    return BlogPublished(**fields)


PAYLOADS = [
    published(),
    BlogUpdated(
        blog_id=BLOG_ID,
        author_id=AUTHOR_ID,
        version=2,
        title="Hello again",
        body="Edited",
        tags=(),
        published_at=T0,
        updated_at=T0,
    ),
    BlogDeleted(blog_id=BLOG_ID, author_id=AUTHOR_ID, version=3, deleted_at=T0),
]


def valid_dict() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(encode_event(new_envelope(published())))
    return result


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.event_type)
def test_round_trip(payload: BlogPublished | BlogUpdated | BlogDeleted) -> None:
    envelope = new_envelope(payload)
    decoded = decode_event(encode_event(envelope))
    assert decoded == envelope
    assert type(decoded.payload) is type(payload)
    assert decoded.event_type == payload.event_type
    assert decoded.key == str(BLOG_ID)
    assert decoded.schema_version == 1


def test_unknown_fields_are_ignored() -> None:
    data = valid_dict()
    data["added_later"] = {"anything": 1}
    data["payload"]["reading_minutes"] = 7
    decoded = decode_event(json.dumps(data).encode())
    assert decoded.payload == published()
    assert not hasattr(decoded, "added_later")


def test_models_are_frozen() -> None:
    envelope = new_envelope(published())
    with pytest.raises(ValueError, match="frozen"):
        envelope.key = "other"  # type: ignore[misc]


def _without(field: str) -> bytes:
    data = valid_dict()
    del data["payload"][field]
    return json.dumps(data).encode()


def _with(**changes: Any) -> bytes:
    data = valid_dict()
    data.update(changes)
    return json.dumps(data).encode()


def _with_payload(**changes: Any) -> bytes:
    data = valid_dict()
    data["payload"].update(changes)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        pytest.param(None, "empty", id="null-value"),
        pytest.param(b"", "json", id="empty-bytes"),
        pytest.param(b"\xff\xfe\x00garbage", "", id="binary-bytes"),
        pytest.param(b"not json at all", "json", id="not-json"),
        pytest.param(b"[1, 2, 3]", "", id="json-array"),
        pytest.param(b"null", "", id="json-null"),
        pytest.param(b'{"hello": "world"}', "event_id", id="wrong-json-object"),
        pytest.param(_with(schema_version=2), "schema_version", id="schema-version-2"),
        pytest.param(_without("blog_id"), "blog_id", id="missing-field"),
        pytest.param(_with_payload(event_type="BlogRenamed"), "event_type", id="unknown-type"),
        pytest.param(_with_payload(title="x" * (TITLE_MAX + 1)), "title", id="huge-title"),
        pytest.param(_with_payload(version=0), "version", id="version-zero"),
        # Consumers store versions as 32-bit integers: the contract bounds them.
        pytest.param(
            _with_payload(version=3_000_000_000),
            "less than or equal to 2147483647",
            id="version-32-bit",
        ),
        pytest.param(_with(payload=None), "payload", id="null-payload"),
    ],
)
def test_undecodable_inputs_raise_with_reason(raw: bytes | None, reason_part: str) -> None:
    with pytest.raises(EventDecodeError) as info:
        decode_event(raw)
    reason = str(info.value)
    assert reason, "the reason must not be empty"
    assert reason_part.lower() in reason.lower()
    assert len(reason) <= 1000


def test_reason_does_not_echo_huge_input() -> None:
    huge_title = "x" * 50_000
    with pytest.raises(EventDecodeError) as info:
        decode_event(_with_payload(title=huge_title))
    assert huge_title[:500] not in str(info.value)


def test_envelope_key_is_the_blog_id() -> None:
    assert Envelope.model_fields["key"].is_required()
    assert new_envelope(published()).key == str(BLOG_ID)

"""The fast decoder (`blog_events.fast`) gives exactly `decode_event`'s verdicts: same inputs
accepted with equal values, same inputs rejected with the same reason. Property-based
(hypothesis), on canonical events, on events with hostile fields (the poison tests' cases and
their neighbours) and on arbitrary bytes; plus the mirror structs against the committed JSON
Schemas, the one contract."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blog_events import Envelope, EventDecodeError, decode_event
from blog_events.fast import (
    FAST_STRUCTS,
    FastEnvelope,
    decode_event_fast,
    fast_parse,
)
from blog_events.models import BODY_MAX, TAG_MAX, TAGS_MAX, TITLE_MAX, VERSION_MAX

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
EXAMPLES = 600


# -- what both decoders are compared on ------------------------------------------------------


def _plain_time(value: datetime) -> tuple[datetime, timedelta | None]:
    # Equal instants with different offsets are not the same value for a consumer.
    return value, value.utcoffset()


def plain(envelope: Envelope | FastEnvelope) -> dict[str, Any]:
    """Every field of either kind of envelope, as plain values."""
    payload = envelope.payload
    fields: dict[str, Any] = {"event_type": payload.event_type}
    for name in (
        "blog_id",
        "author_id",
        "version",
        "title",
        "body",
        "tags",
        "published_at",
        "updated_at",
        "deleted_at",
    ):
        if hasattr(payload, name):
            value = getattr(payload, name)
            fields[name] = _plain_time(value) if isinstance(value, datetime) else value
    return {
        "event_id": envelope.event_id,
        "schema_version": envelope.schema_version,
        "occurred_at": _plain_time(envelope.occurred_at),
        "key": envelope.key,
        "payload": fields,
    }


def verdict_of(decode: Any, raw: bytes | None) -> tuple[str, Any]:
    try:
        decoded = decode(raw)
    except EventDecodeError as exc:
        return "rejected", str(exc)
    return "accepted", plain(decoded)


def assert_same_verdict(raw: bytes | None) -> None:
    expected = verdict_of(decode_event, raw)
    assert verdict_of(decode_event_fast, raw) == expected
    # msgspec alone never accepts what pydantic refuses, nor decodes to another value.
    if raw is not None:
        try:
            alone = fast_parse(raw)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return
        assert expected == ("accepted", plain(alone))


# -- strategies ------------------------------------------------------------------------------

uuids = st.uuids().map(str)
texts = st.text(max_size=20)
hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, -1, VERSION_MAX, VERSION_MAX + 1, 3_000_000_000, 2**63, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, 2.0, 1.5, 1e3]),
    texts,
    st.sampled_from(["1", "2", " 3", "2.0", "true", "", "null"]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
bad_uuids = st.sampled_from(
    [
        "not-a-uuid",
        "",
        "00000000-0000-0000-0000-00000000000",
        "00000000-0000-0000-0000-0000000000000",
        "0000000000000000000000000000000g",
        "{00000000-0000-4000-8000-000000000001}",
        "urn:uuid:00000000-0000-4000-8000-000000000001",
        "00000000000040008000000000000001",
        "00000000-0000-4000-8000-00000000000Z",
        "0000000000000000",
        "00000000-0000-4000-8000-000000000001 ",
        " 00000000-0000-4000-8000-000000000001",
        "00000000_0000_4000_8000_000000000001",
        "00000000-0000-4000-8000-000000000001".upper(),
    ]
)
any_uuid = st.one_of(
    uuids, uuids.map(str.upper), uuids.map(lambda u: u.replace("-", "")), bad_uuids
)


@st.composite
def datetime_texts(draw: st.DrawFn) -> str:
    """RFC 3339 and its near misses: separators, fractions of 0-9 digits, offsets, bad ranges."""
    year = draw(st.sampled_from(["2025", "0001", "9999", "0000", "25", "20250"]))
    month = draw(st.sampled_from(["01", "12", "13", "00", "1"]))
    day = draw(st.sampled_from(["01", "28", "29", "31", "32", "00"]))
    sep = draw(st.sampled_from(["T", "t", " ", "_", "", "TT"]))
    hour = draw(st.sampled_from(["00", "23", "24", "25", "7"]))
    minute = draw(st.sampled_from(["00", "59", "60"]))
    second = draw(st.sampled_from([":00", ":59", ":60", ":61", "", ":5"]))
    digits = draw(st.integers(min_value=0, max_value=10))
    fraction = draw(st.sampled_from(["", "." + "1234567890"[:digits], ",5", "."]))
    offset = draw(
        st.sampled_from(
            ["Z", "z", "+00:00", "-00:00", "+05:30", "-23:59", "+24:00", "+0530", "+05", "", "UTC"]
        )
    )
    return f"{year}-{month}-{day}{sep}{hour}:{minute}{second}{fraction}{offset}"


any_datetime = st.one_of(
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-3, minutes=-30))])).map(
        datetime.isoformat
    ),
    st.datetimes().map(datetime.isoformat),
    datetime_texts(),
    st.sampled_from(["2025-01-02", "03:04:05", "1735787045", "now"]),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False),
)
tag_values = st.one_of(st.text(min_size=0, max_size=TAG_MAX + 2), hostile_scalars)


def sized_text(limit: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=12),
        st.sampled_from([limit - 1, limit, limit + 1]).map(lambda n: "x" * n),
        st.sampled_from([limit - 1, limit, limit + 1]).map(lambda n: "é" * n),
        st.just("\U0001f600" * (limit // 2 + 1)),
    )


MISSING = object()


@st.composite
def valid_envelopes(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["BlogPublished", "BlogUpdated", "BlogDeleted"]))
    blog_id = draw(uuids)
    payload: dict[str, Any] = {
        "event_type": kind,
        "blog_id": blog_id,
        "author_id": draw(uuids),
        "version": draw(
            st.integers(min_value=1 if kind == "BlogPublished" else 2, max_value=VERSION_MAX)
        ),
    }
    times = st.one_of(
        st.just("2025-01-02T03:04:05.123456Z"),
        st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
    )
    if kind != "BlogDeleted":
        payload["title"] = draw(st.text(min_size=1, max_size=40))
        payload["body"] = draw(st.text(max_size=200))
        payload["tags"] = draw(st.lists(st.text(min_size=1, max_size=TAG_MAX), max_size=TAGS_MAX))
        payload["published_at"] = draw(times)
    if kind == "BlogUpdated":
        payload["updated_at"] = draw(times)
    if kind == "BlogDeleted":
        payload["deleted_at"] = draw(times)
    return {
        "event_id": draw(uuids),
        "schema_version": 1,
        "occurred_at": draw(times),
        "key": blog_id,
        "payload": payload,
    }


# Any field may get any of these: each type's near misses, wrong types, boundaries.
nasty = st.one_of(
    hostile_scalars,
    any_uuid,
    any_datetime,
    sized_text(TITLE_MAX),
    sized_text(TAG_MAX),
    sized_text(64),
    st.just("x" * (BODY_MAX + 1)),
    st.sampled_from(["BlogPublished", "BlogUpdated", "BlogDeleted", "BlogRenamed", ""]),
    st.lists(tag_values, max_size=TAGS_MAX + 2),
    st.just(["t"] * (TAGS_MAX + 1)),
    st.just(MISSING),
)


boundary_ints = st.sampled_from([-1, 0, 1, 2, VERSION_MAX, VERSION_MAX + 1, 3_000_000_000])
tags_near_misses = st.one_of(
    st.lists(tag_values, max_size=TAGS_MAX + 2),
    st.just(["t"] * (TAGS_MAX + 1)),
    st.just(["t"] * TAGS_MAX),
    st.sampled_from([[""], ["x" * TAG_MAX], ["x" * (TAG_MAX + 1)], "intro", [None], [1]]),
)
# Per field: that field's near misses (mostly), or anything nasty.
NEAR_MISSES: dict[str, st.SearchStrategy[Any]] = {
    "event_id": any_uuid,
    "blog_id": any_uuid,
    "author_id": any_uuid,
    "version": st.one_of(boundary_ints, boundary_ints.map(float), boundary_ints.map(str)),
    "title": sized_text(TITLE_MAX),
    "body": st.one_of(sized_text(BODY_MAX), st.just(None)),
    "tags": tags_near_misses,
    "key": sized_text(64),
    "schema_version": st.sampled_from([0, 1, 2, "1", 1.0, True, None]),
    "event_type": st.sampled_from(
        ["BlogPublished", "BlogUpdated", "BlogDeleted", "BlogRenamed", "", "blogpublished", None]
    ),
    "occurred_at": any_datetime,
    "published_at": any_datetime,
    "updated_at": any_datetime,
    "deleted_at": any_datetime,
}


ENVELOPE_FIELDS = frozenset({"event_id", "schema_version", "occurred_at", "key"})


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with 0-3 fields (of the envelope or the payload) replaced, removed or
    added: inputs one or two steps from valid, where two decoders most likely disagree."""
    envelope = draw(valid_envelopes())
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        name = draw(st.sampled_from([*NEAR_MISSES, "extra"]))
        in_envelope = name in ENVELOPE_FIELDS or (name == "extra" and draw(st.booleans()))
        target = envelope if in_envelope else envelope["payload"]
        if not isinstance(target, dict):
            continue
        near = NEAR_MISSES.get(name)
        value = draw(nasty if near is None or draw(st.integers(0, 4)) == 0 else near)
        if value is MISSING:
            target.pop(name, None)
        else:
            target[name] = value
    return envelope


# -- the properties --------------------------------------------------------------------------


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes())
def test_same_verdict_on_events_with_hostile_fields(envelope: dict[str, Any]) -> None:
    assert_same_verdict(json.dumps(envelope).encode())


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode)))
def test_same_verdict_on_arbitrary_bytes(raw: bytes) -> None:
    assert_same_verdict(raw)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )
)
def test_same_verdict_on_arbitrary_json(document: Any) -> None:
    assert_same_verdict(json.dumps(document).encode())


def _valid() -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "schema_version": 1,
        "occurred_at": "2025-01-02T03:04:05+00:00",
        "key": "00000000-0000-4000-8000-000000000001",
        "payload": {
            "event_type": "BlogPublished",
            "blog_id": "00000000-0000-4000-8000-000000000001",
            "author_id": "00000000-0000-4000-8000-0000000000aa",
            "version": 1,
            "title": "Hello",
            "body": "First post",
            "tags": ["intro"],
            "published_at": "2025-01-02T03:04:05.123456Z",
        },
    }


def _changed(**payload_changes: Any) -> bytes:
    document = _valid()
    document["payload"].update(payload_changes)
    return json.dumps(document).encode()


def _without(name: str) -> bytes:
    document = _valid()
    del document["payload"][name]
    return json.dumps(document).encode()


# The poison tests' cases (tests/resilience, libs/events/tests/test_codec.py), by name.
@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"\x00\x9f\xff\xfe\x01binary",
        b'{"event_id": "',
        b"not json at all",
        b"[1, 2, 3]",
        b"null",
        b'{"hello": "world"}',
        json.dumps({**_valid(), "schema_version": 2}).encode(),
        json.dumps({**_valid(), "payload": None}).encode(),
        _without("author_id"),
        _without("blog_id"),
        _without("event_type"),
        _changed(event_type="BlogRenamed"),
        _changed(version=3_000_000_000),
        _changed(version=0),
        _changed(version="1"),
        _changed(version=1.0),
        _changed(version=True),
        _changed(title=None),
        _changed(title="x" * (TITLE_MAX + 1)),
        _changed(body="x" * 700_000),
        _changed(blog_id="not-a-uuid"),
        _changed(blog_id=12345),
        _changed(tags="intro"),
        _changed(tags=[""]),
        _changed(published_at="yesterday"),
        _changed(published_at=1735787045),
        _changed(published_at="2025-01-02T03:04:05.1234567Z"),
        json.dumps(_valid()).encode().replace(b"05.123456Z", b"05\\u002e1234567Z"),
        json.dumps(_valid()).encode().replace(b"05.123456Z", b"05.123456\\u0037Z"),
        json.dumps(_valid()).encode().replace(b'"Hello"', b'"\\u0048ello"'),
        json.dumps(_valid()).encode(),
    ],
)
def test_same_verdict_on_the_poison_cases(raw: bytes | None) -> None:
    assert_same_verdict(raw)


GRID_VALUES: dict[str, list[Any]] = {
    "uuid": [
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000001".upper(),
        "00000000000040008000000000000001",
        "{00000000-0000-4000-8000-000000000001}",
        "urn:uuid:00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-00000000001",
        "not-a-uuid",
        "",
        12345,
        None,
    ],
    "int": [
        -1,
        0,
        1,
        2,
        VERSION_MAX,
        VERSION_MAX + 1,
        3_000_000_000,
        2**64,
        1.0,
        2.0,
        2.5,
        "2",
        True,
        None,
        [],
        {},
    ],
    "text": [
        "",
        "x",
        "x" * 40,
        "x" * 41,
        "x" * 64,
        "x" * 65,
        "x" * TITLE_MAX,
        "x" * (TITLE_MAX + 1),
        "é" * 65,
        "x" * (BODY_MAX + 1),
        1,
        None,
        ["x"],
    ],
    "time": [
        "2025-01-02T03:04:05Z",
        "2025-01-02T03:04:05.1234567Z",
        "2025-01-02T03:04:05.123456789+05:30",
        "2025-01-02t03:04:05z",
        "2025-01-02T03:04:05,123Z",
        "2025-01-02T03:04:05,1234567Z",
        "2025-01-02T03:04:05.Z",
        "2025-01-02 03:04:05",
        "2025-01-02T03:04:05",
        "2025-01-02T03:04",
        "2025-01-02",
        "2025-01-02T24:00:00Z",
        "2025-01-02T23:59:60Z",
        "2025-02-29T00:00:00Z",
        "2025-01-02T03:04:05-00:00",
        "2025-01-02T03:04:05+24:00",
        "2025-01-02T03:04:05+0530",
        1735787045,
        1735787045.5,
        "1735787045",
        None,
    ],
    "tags": [
        [],
        ["a"],
        [""],
        ["x" * TAG_MAX],
        ["x" * (TAG_MAX + 1)],
        ["t"] * TAGS_MAX,
        ["t"] * (TAGS_MAX + 1),
        "intro",
        [1],
        [None],
        None,
        {},
    ],
    "schema_version": [0, 1, 2, "1", 1.0, True, None],
    "event_type": ["BlogPublished", "BlogUpdated", "BlogDeleted", "BlogRenamed", "", None, 1],
}
GRID_FIELDS = {
    "event_id": "uuid",
    "blog_id": "uuid",
    "author_id": "uuid",
    "version": "int",
    "title": "text",
    "body": "text",
    "key": "text",
    "tags": "tags",
    "schema_version": "schema_version",
    "event_type": "event_type",
    "occurred_at": "time",
    "published_at": "time",
    "updated_at": "time",
    "deleted_at": "time",
}
GRID_KINDS: dict[str, dict[str, Any]] = {
    "BlogPublished": {},
    "BlogUpdated": {"version": 2, "updated_at": "2025-01-03T00:00:00Z"},
    "BlogDeleted": {"version": 3, "deleted_at": "2025-01-04T00:00:00Z"},
}


def _grid() -> list[Any]:
    cases = []
    for kind, extra in GRID_KINDS.items():
        for name, family in GRID_FIELDS.items():
            for n, value in enumerate([*GRID_VALUES[family], MISSING]):
                document = _valid()
                document["payload"].update(event_type=kind, **extra)
                if kind == "BlogDeleted":
                    for gone in ("title", "body", "tags", "published_at"):
                        del document["payload"][gone]
                target = document if name in ENVELOPE_FIELDS else document["payload"]
                if value is MISSING:
                    target.pop(name, None)
                else:
                    target[name] = value
                cases.append(pytest.param(json.dumps(document).encode(), id=f"{kind}-{name}-{n}"))
    return cases


@pytest.mark.parametrize("raw", _grid())
def test_same_verdict_with_one_field_changed(raw: bytes) -> None:
    """Every field of every kind, set to each of its type's boundaries and near misses (or
    removed), one at a time."""
    assert_same_verdict(raw)


def test_the_canonical_event_takes_the_fast_path() -> None:
    """What the publisher writes is decoded by msgspec alone (no pydantic fallback)."""
    from blog_events import BlogPublished, encode_event, new_envelope

    envelope = new_envelope(
        BlogPublished(
            blog_id=uuid.uuid4(),
            author_id=uuid.uuid4(),
            version=1,
            title="t",
            body="b",
            tags=("a",),
            published_at=datetime.now(UTC),
        )
    )
    raw = encode_event(envelope)
    assert plain(fast_parse(raw)) == plain(envelope)


def test_rejections_keep_pydantic_reasons() -> None:
    with pytest.raises(EventDecodeError, match="less than or equal to 2147483647"):
        decode_event_fast(_changed(version=3_000_000_000))
    with pytest.raises(EventDecodeError, match="empty message value"):
        decode_event_fast(None)


# -- the mirror structs against the committed JSON Schemas ------------------------------------


def _constraints(properties: dict[str, Any]) -> dict[str, Any]:
    """What validation depends on, per property: type, format, bounds, items, const."""
    keep = {"type", "format", "maxLength", "minLength", "maximum", "minimum", "maxItems", "const"}
    out: dict[str, Any] = {}
    for name, spec in properties.items():
        if "$ref" in spec or "anyOf" in spec or "oneOf" in spec:
            out[name] = "ref"
            continue
        out[name] = {k: v for k, v in spec.items() if k in keep}
        if spec.get("enum") and len(spec["enum"]) == 1:  # msgspec's Literal[1]: enum [1]
            (value,) = spec["enum"]
            out[name].update(const=value, type={int: "integer", str: "string"}[type(value)])
        if "items" in spec:
            out[name]["items"] = {k: v for k, v in spec["items"].items() if k in keep}
    return out


@pytest.mark.parametrize("name", sorted(FAST_STRUCTS))
def test_mirror_structs_match_the_committed_schemas(name: str) -> None:
    committed = json.loads((SCHEMAS / f"{name}.json").read_text())
    _, components = msgspec.json.schema_components([FAST_STRUCTS[name]])
    mirror = components[FAST_STRUCTS[name].__name__]
    tag = committed["properties"].get("event_type", {}).get("const")
    committed_props = {k: v for k, v in committed["properties"].items() if k != "event_type"}
    mirror_props = {k: v for k, v in mirror["properties"].items() if k != "event_type"}
    # msgspec writes `format: date-time` only for timezone-aware-only datetimes; pydantic's
    # schema says date-time for any datetime. Check those fields are datetimes, then compare.
    types = {f.name: f.type for f in msgspec.structs.fields(FAST_STRUCTS[name])}
    for prop, spec in committed_props.items():
        if spec.get("format") == "date-time":
            assert types[prop] is datetime, prop
            committed_props[prop] = {k: v for k, v in spec.items() if k != "format"}
    assert _constraints(mirror_props) == _constraints(committed_props)
    required = set(committed["required"])
    assert set(mirror["required"]) - {"event_type"} == required
    if tag is not None:
        assert mirror["properties"]["event_type"]["enum"] == [tag]

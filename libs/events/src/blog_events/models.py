"""Typed, frozen event models. Changing them changes the wire format: regenerate the committed
JSON Schemas (`make schemas`) and the contract test tells whether consumers still parse."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TOPIC = "blog-events"
SCHEMA_VERSION: Final = 1

# Bounds shared with the publisher's request validation: an event that passes the publisher
# must always parse in every consumer.
TITLE_MAX = 300
BODY_MAX = 100_000
TAG_MAX = 40
TAGS_MAX = 10
# Versions are stored as 32-bit integers by the publisher and the counter (PostgreSQL `integer`):
# the contract says so, so a larger one is refused at decoding (dead-lettered with that reason)
# instead of failing a consumer's write.
VERSION_MAX = 2**31 - 1


class _Frozen(BaseModel):
    # Consumers ignore unknown fields, so producers may add optional fields without breaking them.
    model_config = ConfigDict(frozen=True, extra="ignore")


Tag = Annotated[str, Field(min_length=1, max_length=TAG_MAX)]


class BlogPublished(_Frozen):
    event_type: Literal["BlogPublished"] = "BlogPublished"
    blog_id: uuid.UUID
    author_id: uuid.UUID
    version: int = Field(ge=1, le=VERSION_MAX)
    title: str = Field(min_length=1, max_length=TITLE_MAX)
    body: str = Field(max_length=BODY_MAX)
    tags: tuple[Tag, ...] = Field(default=(), max_length=TAGS_MAX)
    published_at: datetime


class BlogUpdated(_Frozen):
    event_type: Literal["BlogUpdated"] = "BlogUpdated"
    blog_id: uuid.UUID
    author_id: uuid.UUID
    version: int = Field(ge=2, le=VERSION_MAX)
    title: str = Field(min_length=1, max_length=TITLE_MAX)
    body: str = Field(max_length=BODY_MAX)
    tags: tuple[Tag, ...] = Field(default=(), max_length=TAGS_MAX)
    published_at: datetime
    updated_at: datetime


class BlogDeleted(_Frozen):
    event_type: Literal["BlogDeleted"] = "BlogDeleted"
    blog_id: uuid.UUID
    author_id: uuid.UUID
    version: int = Field(ge=2, le=VERSION_MAX)
    deleted_at: datetime


BlogEvent = Annotated[BlogPublished | BlogUpdated | BlogDeleted, Field(discriminator="event_type")]


class Envelope(_Frozen):
    event_id: uuid.UUID
    schema_version: Literal[1] = SCHEMA_VERSION
    occurred_at: datetime
    # The Kafka message key: the blog id, so all events of one blog land on one partition in order.
    key: str = Field(min_length=1, max_length=64)
    payload: BlogEvent

    @property
    def event_type(self) -> str:
        return self.payload.event_type


class EventDecodeError(ValueError):
    """The bytes are not a valid event of a schema version this code understands."""


def new_envelope(payload: BlogPublished | BlogUpdated | BlogDeleted) -> Envelope:
    return Envelope(
        event_id=uuid.uuid4(),
        occurred_at=datetime.now(UTC),
        key=str(payload.blog_id),
        payload=payload,
    )


def encode_event(envelope: Envelope) -> bytes:
    return envelope.model_dump_json().encode()


def decode_event(raw: bytes | None) -> Envelope:
    if raw is None:
        raise EventDecodeError("empty message value")
    try:
        return Envelope.model_validate_json(raw)
    except ValidationError as exc:
        # Keep the reason short enough for a Kafka header, and free of the (possibly huge) input.
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_input=False)[:5]
        )
        raise EventDecodeError(reasons[:1000]) from None

"""HTTP request and response models. Request limits are the event contract's, so anything the
publisher accepts always parses in every consumer."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from blog_events.models import BODY_MAX, TAG_MAX, TAGS_MAX, TITLE_MAX


def storable_text(value: str) -> str:
    """Text PostgreSQL and UTF-8 can hold: JSON may carry `\\u0000` (PostgreSQL text cannot
    store NUL) and lone surrogates like `\\ud800` (not encodable as UTF-8)."""
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must not contain unpaired surrogates (not valid Unicode)") from None
    return value


StorableText = Annotated[str, AfterValidator(storable_text)]
Tag = Annotated[StorableText, Field(min_length=1, max_length=TAG_MAX)]


class BlogDraft(BaseModel):
    """The full content of a blog (POST creates it, PUT replaces it)."""

    model_config = ConfigDict(extra="forbid")

    title: StorableText = Field(min_length=1, max_length=TITLE_MAX)
    body: StorableText = Field(max_length=BODY_MAX)
    tags: list[Tag] = Field(default_factory=list, max_length=TAGS_MAX)


class WriteAccepted(BaseModel):
    """A write is durable; consumers apply it eventually (follow `status_url`)."""

    id: uuid.UUID
    version: int
    status_url: str


class BlogOut(BaseModel):
    # Built straight from the store's `Blog` row (its extra `deleted_at` is left out).
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    author_id: uuid.UUID
    title: str
    body: str
    tags: list[str]
    version: int
    created_at: datetime
    updated_at: datetime


class BlogPage(BaseModel):
    items: list[BlogOut]
    next_cursor: str | None


class EventPosition(BaseModel):
    partition: int
    offset: int


class GroupProgress(BaseModel):
    processed: bool
    committed_offset: int | None
    error: str | None = None


class BlogStatus(BaseModel):
    blog_id: uuid.UUID
    version: int
    event: EventPosition | None
    groups: dict[str, GroupProgress]

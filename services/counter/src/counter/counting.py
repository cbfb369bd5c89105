"""The counting rules, free of I/O: fold a batch to one change per blog, then decide against the
stored state which changes apply (version guard) and how each author's total moves."""

from __future__ import annotations

import operator
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


class PayloadView(Protocol):
    """What counting reads of a payload: pydantic's models and the fast decoder's structs
    (`blog_events.fast`) both have it."""

    @property
    def event_type(self) -> str: ...
    @property
    def blog_id(self) -> uuid.UUID: ...
    @property
    def author_id(self) -> uuid.UUID: ...
    @property
    def version(self) -> int: ...


class EventView(Protocol):
    @property
    def event_id(self) -> uuid.UUID: ...
    @property
    def payload(self) -> PayloadView: ...


# Not frozen (treat it as read-only): one is built per event, and a frozen dataclass's __init__
# (object.__setattr__ per field) cost ~0.4 us more each.
@dataclass(slots=True)
class BlogChange:
    """A blog's state after one event: the newest one of its blog in the batch."""

    blog_id: uuid.UUID
    author_id: uuid.UUID
    version: int
    live: bool
    event_id: uuid.UUID


@dataclass(frozen=True)
class StoredBlog:
    """What the counter has already applied for one blog."""

    author_id: uuid.UUID
    version: int
    live: bool


@dataclass(frozen=True)
class BatchPlan:
    """The writes one batch needs: blog rows to upsert and non-zero per-author deltas."""

    changes: tuple[BlogChange, ...]
    author_deltas: Mapping[uuid.UUID, int]
    stale: int  # blogs whose newest version in the batch was already applied


# UUIDs in their natural order (the one PostgreSQL sorts uuid by) at a C attribute's cost:
# UUID.__lt__ is Python code, and sorting a batch's ids with it was ~1 us per event.
by_uuid = operator.attrgetter("int")


def _by_author(item: tuple[uuid.UUID, int]) -> int:
    return item[0].int


def is_live(payload: PayloadView) -> bool:
    # A decoded event is one of the contract's three types: published and updated blogs are live.
    return payload.event_type != "BlogDeleted"


def change_of(envelope: EventView) -> BlogChange:
    payload = envelope.payload
    # Positional: keywords cost ~0.15 us more per event.
    return BlogChange(
        payload.blog_id,
        payload.author_id,
        payload.version,
        is_live(payload),
        envelope.event_id,
    )


def fold_newest_per_blog(envelopes: Iterable[EventView]) -> dict[uuid.UUID, BlogChange]:
    """Keep, per blog, the event with the highest version. Every event carries the blog's whole
    state after it, so the newest one alone decides the outcome, whatever the order in the batch;
    a duplicate of the same version keeps the first seen."""
    newest: dict[uuid.UUID, BlogChange] = {}
    for envelope in envelopes:
        change = change_of(envelope)
        held = newest.get(change.blog_id)
        if held is None or change.version > held.version:
            newest[change.blog_id] = change
    return newest


def plan_batch(
    newest: Mapping[uuid.UUID, BlogChange], stored: Mapping[uuid.UUID, StoredBlog]
) -> BatchPlan:
    """Apply only versions newer than stored; each applied change moves its author's total by
    live_after - live_before (an unseen blog counts as not live before)."""
    applied: list[BlogChange] = []
    deltas: defaultdict[uuid.UUID, int] = defaultdict(int)
    stale = 0
    for blog_id in sorted(newest, key=by_uuid):
        change = newest[blog_id]
        before = stored.get(blog_id)
        if before is not None and change.version <= before.version:
            stale += 1
            continue
        applied.append(change)
        if before is not None and before.live:
            deltas[before.author_id] -= 1
        if change.live:
            deltas[change.author_id] += 1
    return BatchPlan(
        changes=tuple(applied),
        author_deltas={
            author: delta for author, delta in sorted(deltas.items(), key=_by_author) if delta != 0
        },
        stale=stale,
    )

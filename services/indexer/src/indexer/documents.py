"""Pure functions turning a batch of blog events into one Elasticsearch bulk request, and
judging its response. No I/O here, so all of it is unit-tested.

Exactly-once effects come from Elasticsearch itself: document id = blog id and
`version_type=external` with the blog's version, so an event whose version is not newer than
the stored one is rejected with 409 (= already applied). A delete writes a tombstone at the
delete's version instead of deleting the document: Elasticsearch forgets the versions of really
deleted documents after `index.gc_deletes` (60 s), after which a replayed older publish would
resurrect the blog.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from blog_events import BlogDeleted, BlogPublished, BlogUpdated
from blog_events.fast import FastBlogDeleted, FastBlogPublished, FastBlogUpdated

# The pydantic models or the fast decoder's structs (blog_events.fast): same fields.
BlogEventPayload = (
    BlogPublished
    | BlogUpdated
    | BlogDeleted
    | FastBlogPublished
    | FastBlogUpdated
    | FastBlogDeleted
)
DELETED: tuple[type[BlogDeleted], type[FastBlogDeleted]] = (BlogDeleted, FastBlogDeleted)

VERSION_CONFLICT = "version_conflict_engine_exception"


def fold_latest(events: Iterable[BlogEventPayload]) -> list[BlogEventPayload]:
    """Keep, per blog, only the event with the highest version (the first one on a tie).

    Each payload carries the blog's whole state after the change, so the newest event alone
    gives the final document; older ones would only be overwritten within the same bulk.
    The result keeps the order in which blogs first appear.
    """
    newest: dict[uuid.UUID, BlogEventPayload] = {}
    for event in events:
        held = newest.get(event.blog_id)
        if held is None or event.version > held.version:
            newest[event.blog_id] = event
    return list(newest.values())


def document_for(event: BlogEventPayload) -> dict[str, Any]:
    """The `_source` stored for the blog's state after `event`."""
    if isinstance(event, (BlogDeleted, FastBlogDeleted)):
        return {
            "blog_id": str(event.blog_id),
            "author_id": str(event.author_id),
            "version": event.version,
            "deleted": True,
        }
    return {
        "blog_id": str(event.blog_id),
        "author_id": str(event.author_id),
        "title": event.title,
        "body": event.body,
        "tags": list(event.tags),
        "version": event.version,
        "published_at": event.published_at.isoformat(),
        "updated_at": event.updated_at.isoformat()
        if isinstance(event, (BlogUpdated, FastBlogUpdated))
        else None,
        "deleted": False,
    }


def bulk_operations(index: str, newest: Iterable[BlogEventPayload]) -> list[dict[str, Any]]:
    """The bulk body (action line, document line, ...) for events already folded per blog by
    `fold_latest` (the handler folds once and also counts tombstones from the result)."""
    operations: list[dict[str, Any]] = []
    for event in newest:
        operations.append(
            {
                "index": {
                    "_index": index,
                    "_id": str(event.blog_id),
                    "version": event.version,
                    "version_type": "external",
                }
            }
        )
        operations.append(document_for(event))
    return operations


# Item errors that say the index as a whole cannot take writes now, whatever the document: a
# write block, a missing alias or index, unavailable shards. Retried like an outage.
INDEX_WIDE_ERRORS = frozenset(
    {
        "cluster_block_exception",
        "index_not_found_exception",
        "index_closed_exception",
        "no_shard_available_action_exception",
        "unavailable_shards_exception",
        "es_rejected_execution_exception",
        "circuit_breaking_exception",
    }
)


class BulkItemsUnavailable(RuntimeError):
    """Some bulk items failed for a reason that is not theirs (429, 5xx, an index-wide block):
    a transient failure, the batch is retried as a whole (idempotent by versions)."""

    def __init__(self, failures: Sequence[Mapping[str, Any]]) -> None:
        self.failures = list(failures)
        first = failures[0]
        super().__init__(
            f"{len(failures)} bulk item(s) failed; first: id={first.get('_id')} "
            f"status={first.get('status')} error={_error_text(first.get('error'))}"
        )


@dataclass(frozen=True)
class BulkOutcome:
    written_ids: tuple[str, ...]  # documents stored at a newer version
    already_applied: int  # version conflicts: the index already holds this version or a newer one
    # Documents Elasticsearch refused for what they hold (4xx: a value the mapping cannot
    # parse...): blog id -> why. Retried alone, then dead-lettered.
    rejected: Mapping[str, str] = field(default_factory=dict)


def item_is_transient(status: int, error_type: str | None) -> bool:
    return status == 429 or status >= 500 or error_type in INDEX_WIDE_ERRORS


def check_bulk_response(response: Mapping[str, Any]) -> BulkOutcome:
    """Judge each item: written, already applied (version conflict), rejected for its own
    content (4xx), or failed for a reason that is not its own; the last raise
    `BulkItemsUnavailable` (the whole batch is retried)."""
    written_ids: list[str] = []
    already_applied = 0
    rejected: dict[str, str] = {}
    unavailable: list[Mapping[str, Any]] = []
    for item in response.get("items", []):
        # Each item is {"<op type>": {...}}; we only send `index` ops.
        result: Mapping[str, Any] = next(iter(item.values()))
        error = result.get("error")
        status = int(result.get("status") or 0)
        error_type = _error_type(error)
        if error is None:
            written_ids.append(str(result.get("_id")))
        elif status == 409 and error_type == VERSION_CONFLICT:
            already_applied += 1
        elif item_is_transient(status, error_type):
            unavailable.append(result)
        else:
            blog_id = str(result.get("_id"))
            rejected[blog_id] = (
                f"Elasticsearch rejected the document of blog {blog_id}: "
                f"{status} {_error_text(error)}"
            )
    if unavailable:
        raise BulkItemsUnavailable(unavailable)
    return BulkOutcome(
        written_ids=tuple(written_ids), already_applied=already_applied, rejected=rejected
    )


def _error_type(error: Any) -> str | None:
    if isinstance(error, Mapping):
        error_type = error.get("type")
        return error_type if isinstance(error_type, str) else None
    return None


def _error_text(error: Any) -> str:
    """`type: reason` of an item error (its cause's too, where the real reason usually is)."""
    if not isinstance(error, Mapping):
        return str(error)
    text = f"{error.get('type')}: {error.get('reason')}"
    cause = error.get("caused_by")
    if isinstance(cause, Mapping):
        text += f" (caused by {cause.get('type')}: {cause.get('reason')})"
    return text

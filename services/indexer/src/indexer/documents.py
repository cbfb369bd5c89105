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
from dataclasses import dataclass
from typing import Any

from blog_events import BlogDeleted, BlogPublished, BlogUpdated

BlogEventPayload = BlogPublished | BlogUpdated | BlogDeleted

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
    if isinstance(event, BlogDeleted):
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
        "updated_at": event.updated_at.isoformat() if isinstance(event, BlogUpdated) else None,
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


class BulkItemsFailed(RuntimeError):
    """Some bulk items failed for a reason other than "already applied": retry the batch."""

    def __init__(self, failures: Sequence[Mapping[str, Any]]) -> None:
        self.failures = list(failures)
        first = failures[0]
        super().__init__(
            f"{len(failures)} bulk item(s) failed; first: id={first.get('_id')} "
            f"status={first.get('status')} error={first.get('error')}"
        )


@dataclass(frozen=True)
class BulkOutcome:
    written_ids: tuple[str, ...]  # documents stored at a newer version
    already_applied: int  # version conflicts: the index already holds this version or a newer one


def check_bulk_response(response: Mapping[str, Any]) -> BulkOutcome:
    """Count the items; raise `BulkItemsFailed` if any failed other than by a version conflict."""
    written_ids: list[str] = []
    already_applied = 0
    failures: list[Mapping[str, Any]] = []
    for item in response.get("items", []):
        # Each item is {"<op type>": {...}}; we only send `index` ops.
        result: Mapping[str, Any] = next(iter(item.values()))
        error = result.get("error")
        if error is None:
            written_ids.append(str(result.get("_id")))
        elif result.get("status") == 409 and _error_type(error) == VERSION_CONFLICT:
            already_applied += 1
        else:
            failures.append(result)
    if failures:
        raise BulkItemsFailed(failures)
    return BulkOutcome(written_ids=tuple(written_ids), already_applied=already_applied)


def _error_type(error: Any) -> str | None:
    if isinstance(error, Mapping):
        error_type = error.get("type")
        return error_type if isinstance(error_type, str) else None
    return None

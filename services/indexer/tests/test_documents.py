"""Unit tests: folding a batch per blog, building the bulk body, judging the bulk response."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from blog_events import BlogDeleted, BlogPublished, BlogUpdated, new_envelope
from blog_events.fast import from_model
from indexer.documents import (
    BlogEventPayload,
    BulkItemsUnavailable,
    bulk_operations,
    check_bulk_response,
    document_for,
    fold_latest,
)

AUTHOR = uuid.UUID("00000000-0000-4000-8000-00000000000a")
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def published(
    blog_id: uuid.UUID, title: str = "First", tags: tuple[str, ...] = ()
) -> BlogPublished:
    return BlogPublished(
        blog_id=blog_id,
        author_id=AUTHOR,
        version=1,
        title=title,
        body="body",
        tags=tags,
        published_at=T0,
    )


def updated(blog_id: uuid.UUID, version: int, title: str = "Edited") -> BlogUpdated:
    return BlogUpdated(
        blog_id=blog_id,
        author_id=AUTHOR,
        version=version,
        title=title,
        body="new body",
        tags=("kafka",),
        published_at=T0,
        updated_at=T0 + timedelta(minutes=version),
    )


def deleted(blog_id: uuid.UUID, version: int) -> BlogDeleted:
    return BlogDeleted(
        blog_id=blog_id, author_id=AUTHOR, version=version, deleted_at=T0 + timedelta(hours=1)
    )


class TestFoldLatest:
    def test_keeps_the_newest_version_of_each_blog_whatever_the_order(self) -> None:
        a, b = uuid.uuid4(), uuid.uuid4()
        events: list[BlogEventPayload] = [
            updated(a, 3),
            published(b),
            published(a),
            deleted(a, 4),
            updated(a, 2),
        ]
        folded = fold_latest(events)
        assert [(e.blog_id, e.version) for e in folded] == [(a, 4), (b, 1)]
        assert isinstance(folded[0], BlogDeleted)

    def test_duplicates_collapse_to_one_event(self) -> None:
        a = uuid.uuid4()
        first, duplicate = updated(a, 2, title="one"), updated(a, 2, title="two")
        assert fold_latest([first, duplicate]) == [first]

    def test_empty_batch(self) -> None:
        assert fold_latest([]) == []


class TestDocuments:
    def test_published_blog_document(self) -> None:
        a = uuid.uuid4()
        assert document_for(published(a, title="Hello", tags=("x", "y"))) == {
            "blog_id": str(a),
            "author_id": str(AUTHOR),
            "title": "Hello",
            "body": "body",
            "tags": ["x", "y"],
            "version": 1,
            "published_at": "2025-01-02T03:04:05+00:00",
            "updated_at": None,
            "deleted": False,
        }

    def test_updated_blog_document_has_updated_at(self) -> None:
        document = document_for(updated(uuid.uuid4(), 5))
        assert document["version"] == 5
        assert document["updated_at"] == "2025-01-02T03:09:05+00:00"
        assert document["deleted"] is False

    def test_delete_is_a_tombstone_without_content(self) -> None:
        a = uuid.uuid4()
        assert document_for(deleted(a, 7)) == {
            "blog_id": str(a),
            "author_id": str(AUTHOR),
            "version": 7,
            "deleted": True,
        }


class TestBulkOperations:
    def test_one_externally_versioned_index_op_per_blog(self) -> None:
        a, b = uuid.uuid4(), uuid.uuid4()
        operations = bulk_operations(
            "blogs", fold_latest([published(a), published(b), updated(a, 2)])
        )
        assert operations[0::2] == [
            {"index": {"_index": "blogs", "_id": str(a), "version": 2, "version_type": "external"}},
            {"index": {"_index": "blogs", "_id": str(b), "version": 1, "version_type": "external"}},
        ]
        assert [doc["title"] for doc in operations[1::2]] == ["Edited", "First"]

    def test_delete_becomes_an_index_op_of_a_tombstone_not_a_delete(self) -> None:
        a = uuid.uuid4()
        operations = bulk_operations("blogs", fold_latest([published(a), deleted(a, 2)]))
        assert operations == [
            {"index": {"_index": "blogs", "_id": str(a), "version": 2, "version_type": "external"}},
            {"blog_id": str(a), "author_id": str(AUTHOR), "version": 2, "deleted": True},
        ]

    def test_empty_batch_has_no_operations(self) -> None:
        assert bulk_operations("blogs", []) == []


def index_item(blog_id: str, status: int, error_type: str | None = None) -> dict[str, object]:
    result: dict[str, object] = {"_id": blog_id, "status": status}
    if error_type is not None:
        result["error"] = {"type": error_type, "reason": "..."}
    return {"index": result}


class TestCheckBulkResponse:
    def test_version_conflicts_count_as_already_applied(self) -> None:
        outcome = check_bulk_response(
            {
                "errors": True,
                "items": [
                    index_item("a", 201),
                    index_item("b", 409, "version_conflict_engine_exception"),
                    index_item("c", 200),
                ],
            }
        )
        assert outcome.written_ids == ("a", "c")
        assert outcome.already_applied == 1

    @pytest.mark.parametrize(
        ("status", "error_type"),
        [
            (429, "es_rejected_execution_exception"),
            (503, "unavailable_shards_exception"),
            (500, "some_server_error"),
            (404, "index_not_found_exception"),
            (403, "cluster_block_exception"),
        ],
    )
    def test_item_errors_that_are_not_the_documents_fail_the_batch(
        self, status: int, error_type: str
    ) -> None:
        response = {
            "errors": True,
            "items": [
                index_item("a", 201),
                index_item("b", status, error_type),
                index_item("c", 400, "document_parsing_exception"),
            ],
        }
        with pytest.raises(BulkItemsUnavailable) as failed:
            check_bulk_response(response)
        assert len(failed.value.failures) == 1
        assert "id=b" in str(failed.value)

    @pytest.mark.parametrize(
        ("status", "error_type"),
        [
            (400, "document_parsing_exception"),
            (400, "mapper_parsing_exception"),
            (400, "illegal_argument_exception"),
            (409, "some_other_conflict"),
        ],
    )
    def test_documents_refused_for_their_content_are_rejected_one_by_one(
        self, status: int, error_type: str
    ) -> None:
        response = {
            "errors": True,
            "items": [
                index_item("a", 201),
                {
                    "index": {
                        "_id": "b",
                        "status": status,
                        "error": {
                            "type": error_type,
                            "reason": "failed to parse field [tags]",
                            "caused_by": {"type": "number_format_exception", "reason": "x"},
                        },
                    }
                },
                index_item("c", 409, "version_conflict_engine_exception"),
            ],
        }
        outcome = check_bulk_response(response)
        assert outcome.written_ids == ("a",)
        assert outcome.already_applied == 1
        assert outcome.rejected == {
            "b": f"Elasticsearch rejected the document of blog b: {status} {error_type}: "
            "failed to parse field [tags] (caused by number_format_exception: x)"
        }


@pytest.mark.parametrize("kind", ["published", "updated", "deleted"])
def test_the_fast_decoders_structs_give_the_same_documents(kind: str) -> None:
    """The indexer decodes with blog_events.fast: its structs must index exactly like the
    pydantic models (same _source, same action line)."""
    blog = uuid.uuid4()
    payloads: dict[str, BlogPublished | BlogUpdated | BlogDeleted] = {
        "published": published(blog),
        "updated": updated(blog, 2),
        "deleted": deleted(blog, 3),
    }
    payload = payloads[kind]
    fast = from_model(new_envelope(payload)).payload
    assert document_for(fast) == document_for(payload)
    assert bulk_operations("ix", [fast]) == bulk_operations("ix", [payload])

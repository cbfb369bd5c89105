"""Unit tests: a batch's documents split into bulk parts that share no blog, and the parts'
outcomes merged."""

from __future__ import annotations

import uuid

from indexer.documents import BulkOutcome
from indexer.handler import MIN_PART, merged, parts_of


def test_parts_cover_every_document_once_in_order() -> None:
    documents = [uuid.uuid4() for _ in range(5 * MIN_PART + 3)]
    parts = parts_of(documents, parts=2)
    assert len(parts) == 2
    assert [d for part in parts for d in part] == documents
    assert all(len(part) >= MIN_PART for part in parts)


def test_small_batches_stay_one_bulk() -> None:
    documents = list(range(MIN_PART + MIN_PART // 2))
    assert parts_of(documents, parts=2) == [documents]
    assert parts_of([1], parts=2) == [[1]]


def test_outcomes_are_merged() -> None:
    first = BulkOutcome(written_ids=("a", "b"), already_applied=1, rejected={"x": "why"})
    second = BulkOutcome(written_ids=("c",), already_applied=2)
    assert merged([first, second]) == BulkOutcome(
        written_ids=("a", "b", "c"), already_applied=3, rejected={"x": "why"}
    )

"""The batch handler: one bulk request per consumed batch, durable before it returns."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from elasticsearch import ApiError, AsyncElasticsearch, TransportError

from blog_events.fast import FastEnvelope
from indexer.documents import (
    DELETED,
    BulkItemsUnavailable,
    bulk_operations,
    check_bulk_response,
    fold_latest,
)
from indexer.metrics import DOCUMENTS_REJECTED, DOCUMENTS_WRITTEN, VERSION_CONFLICTS
from service_kit.consumer import BatchHandler, ConsumedEvent, RejectedEvents, transient_errors

log = logging.getLogger(__name__)

BULK_RESPONSE_FIELDS = ["errors", "items.*._id", "items.*.status", "items.*.error"]
# Failures of the Elasticsearch client that mean "not now" rather than "not this document":
# connection errors and timeouts (TransportError), overload (429) and server errors (5xx), and
# item failures that are the index's, not the document's (BulkItemsUnavailable).
INDEX_UNAVAILABLE_STATUSES = frozenset({404, 429})


def es_failure_is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiError):
        status = exc.meta.status
        # 404 on a bulk: the alias is gone (require_alias), not something about one document.
        return status in INDEX_UNAVAILABLE_STATUSES or status >= 500
    return False


IS_TRANSIENT = transient_errors(TransportError, BulkItemsUnavailable, when=es_failure_is_transient)


def make_batch_handler(
    es: AsyncElasticsearch, alias: str, *, require_alias: bool = True
) -> BatchHandler[FastEnvelope]:
    """`require_alias=False`: `alias` names a concrete index (a rebuild writes its new index
    before the alias points at it)."""

    async def handle_batch(batch: Sequence[ConsumedEvent[FastEnvelope]]) -> None:
        newest = fold_latest(consumed.envelope.payload for consumed in batch)
        if not newest:
            return
        # require_alias: if the alias vanished, fail (and retry) instead of auto-creating a
        # concrete index named like the alias with a guessed mapping.
        # refresh=False: search sees the documents after the index refresh interval; forcing a
        # refresh per batch would cost far more than it buys.
        # filter_path: only what check_bulk_response reads, so the response parses in a
        # fraction of the time (a bulk answer repeats index, shards, seq_no... per item).
        response = await es.bulk(
            operations=bulk_operations(alias, newest),
            refresh=False,
            require_alias=require_alias,
            filter_path=BULK_RESPONSE_FIELDS,
        )
        # Items failing for the index's sake (429, 5xx, a write block) raise: the consumer
        # retries the whole batch (idempotent by versions) and commits nothing meanwhile.
        outcome = check_bulk_response(response.body)
        tombstone_ids = {str(e.blog_id) for e in newest if isinstance(e, DELETED)}
        tombstones = sum(1 for blog_id in outcome.written_ids if blog_id in tombstone_ids)
        DOCUMENTS_WRITTEN.labels(kind="tombstone").inc(tombstones)
        DOCUMENTS_WRITTEN.labels(kind="blog").inc(len(outcome.written_ids) - tombstones)
        VERSION_CONFLICTS.inc(outcome.already_applied)
        log.debug(
            "batch of %d events -> %d documents: %d written, %d already applied, %d rejected",
            len(batch),
            len(newest),
            len(outcome.written_ids),
            outcome.already_applied,
            len(outcome.rejected),
        )
        if outcome.rejected:
            DOCUMENTS_REJECTED.inc(len(outcome.rejected))
            # Every event of a rejected blog, not only the newest one that was sent: alone, an
            # older version may well be indexable. The rest of the batch is durable.
            raise RejectedEvents(
                [
                    (event, outcome.rejected[blog_id])
                    for event in batch
                    if (blog_id := str(event.envelope.payload.blog_id)) in outcome.rejected
                ]
            )

    return handle_batch

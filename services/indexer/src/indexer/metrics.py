"""Indexer-specific Prometheus metrics (the consumer's own come from service_kit)."""

from __future__ import annotations

from prometheus_client import Counter

# Defined once at import: the default registry refuses a second registration of the same name.
DOCUMENTS_WRITTEN = Counter(
    "indexer_documents_written_total",
    "Documents stored in Elasticsearch at a newer version, by kind.",
    ["kind"],
)
VERSION_CONFLICTS = Counter(
    "indexer_version_conflicts_total",
    "Bulk items rejected because the index already held that version or a newer one "
    "(redelivered, duplicated or replayed events: already applied).",
)
DOCUMENTS_REJECTED = Counter(
    "indexer_documents_rejected_total",
    "Bulk items Elasticsearch refused for their content (4xx other than a version conflict); "
    "their events are retried alone, then dead-lettered.",
)

"""`python -m indexer verify`: fold `blog-events` from the beginning into the documents the index
must hold (each blog's newest version; a deleted blog's tombstone) and compare them with every
document behind the alias (`_source` and the external `_version`). Exit 0 with a one-line summary
when they agree, 1 with counts and the first differences otherwise.

Blogs in flight (their newest record not yet committed by the live group `indexer`) are read
again until the live group has applied them, for at most `--settle-timeout` seconds."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from typing import Any, TextIO

from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_scan

from blog_events.fast import FastEnvelope
from indexer.app import EVENT_DECODER, elasticsearch_client
from indexer.documents import document_for
from indexer.settings import IndexerSettings
from service_kit.replay import offsets_text, verify_against_log

SHOWN_DIFFERENCES = 10

Document = dict[str, Any]


async def read_documents(es: AsyncElasticsearch, index: str) -> dict[str, tuple[int, Document]]:
    """blog id -> (version, _source) of every document behind `index`, tombstones included. A
    refresh first: what the live group committed is durable but only searchable after one."""
    await es.indices.refresh(index=index)
    found: dict[str, tuple[int, Document]] = {}
    async for hit in async_scan(
        es, index=index, query={"query": {"match_all": {}}}, version=True, size=2000
    ):
        found[hit["_id"]] = (hit["_version"], hit["_source"])
    return found


def entry(envelope: FastEnvelope) -> tuple[str, int, Document]:
    payload = envelope.payload
    return str(payload.blog_id), payload.version, document_for(payload)


def describe(found: tuple[int, Document] | None) -> str:
    """Short, yet tells any field apart: the body by a digest."""
    if found is None:
        return "no document"
    version, doc = found
    if doc.get("deleted"):
        author, source_version = doc.get("author_id"), doc.get("version")
        return f"v{version} tombstone, author {author} (_source v{source_version})"
    body = hashlib.sha256(str(doc.get("body")).encode()).hexdigest()[:8]
    return (
        f"v{version} title={doc.get('title')!r:.60} tags={doc.get('tags')} body#{body} "
        f"author {doc.get('author_id')} published {doc.get('published_at')} "
        f"updated {doc.get('updated_at')} (_source v{doc.get('version')})"
    )


async def run_verify(
    settings: IndexerSettings, settle_timeout_s: float, out: TextIO, index: str | None = None
) -> int:
    """`index`: a physical index to check instead of the alias (e.g. a rebuild before its swap)."""
    target = index or settings.index_alias
    es = elasticsearch_client(settings.es_url)
    try:

        def found_of(snapshot: dict[str, tuple[int, Document]]) -> dict[str, tuple[int, Document]]:
            return snapshot

        result = await verify_against_log(
            bootstrap=settings.kafka_bootstrap_servers,
            topic=settings.topic,
            live_group=settings.group_id,
            decoder=EVENT_DECODER,
            entry=entry,
            read_model=lambda: read_documents(es, target),
            found_of=found_of,
            describe=describe,
            settle_timeout_s=settle_timeout_s,
        )
    finally:
        await es.close()
    tombstones = sum(1 for n in result.fold.newest.values() if n.state.get("deleted"))
    counts = (
        f"{len(result.fold.newest):,} blogs ({len(result.fold.newest) - tombstones:,} live, "
        f"{tombstones:,} tombstones) in {target} from {result.fold.records:,} records of "
        f"{settings.topic} up to offsets {offsets_text(result.until)}; "
        f"{result.fold.undecodable:,} undecodable, {len(result.in_flight):,} still in flight "
        "(not compared)"
    )
    if not result.differences:
        print(f"indexer verify: OK: {counts}", file=out)
        return 0
    shown = result.differences[:SHOWN_DIFFERENCES]
    print(
        f"indexer verify: {len(result.differences):,} document difference(s) against {counts}; "
        f"the first {len(shown)}:",
        file=out,
    )
    for difference in shown:
        print(f"  blog {difference.line().strip()}", file=out)
    return 1


def main_verify(settings: IndexerSettings, settle_timeout_s: float, index: str | None) -> int:
    return asyncio.run(run_verify(settings, settle_timeout_s, sys.stdout, index))

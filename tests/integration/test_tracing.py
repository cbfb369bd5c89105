"""One POST, traced end to end with OpenTelemetry's in-memory exporter: the request span, the
relay's send span (its child, through the traceparent stored with the outbox row), the records'
receive spans (children of the send span, through the record's traceparent header) and the
counter's and indexer's batch spans, linked to the record's context. The publisher, the counter
and the indexer run in this process on the real stack, sharing one tracer provider.

    make test-integration ARGS="tests/integration/test_tracing.py -s"   # prints the trace
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from blog_testkit import Stack, wait_until
from blog_testkit.plugin import create_dead_letter_topics
from counter.app import create_app as create_counter
from counter.settings import Settings as CounterSettings
from indexer.app import create_app as create_indexer
from indexer.settings import IndexerSettings
from publisher.app import create_app as create_publisher
from publisher.auth import create_author
from publisher.settings import PublisherSettings
from service_kit import tracing

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0


@contextlib.asynccontextmanager
async def serving(app: FastAPI, name: str) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{name}") as c,
    ):
        yield c


def describe(span: ReadableSpan) -> str:
    kind = span.kind.name if span.kind != SpanKind.INTERNAL else "INTERNAL"
    attributes = span.attributes or {}
    group = attributes.get("messaging.consumer.group.name")
    extra = f" group={group}" if group else ""
    return f"{span.name} [{kind}]{extra}"


def tree(spans: Sequence[ReadableSpan], trace_id: int) -> str:
    """The trace as an indented tree, then each span of another trace that links into it (the
    consumers' batch spans) with its own subtree."""
    children: dict[int | None, list[ReadableSpan]] = {}
    ids = {span.context.span_id for span in spans}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent and span.parent.span_id in ids else None
        children.setdefault(parent, []).append(span)
    names = {span.context.span_id: span.name for span in spans}
    out: list[str] = [f"trace {trace_id:032x}"]

    def walk(span: ReadableSpan, depth: int) -> None:
        out.append(f"{'  ' * depth}{describe(span)}")
        for child in children.get(span.context.span_id, []):
            walk(child, depth + 1)

    for root in children.get(None, []):
        if root.context.trace_id == trace_id:
            walk(root, 1)
    for root in children.get(None, []):
        linked = [link for link in root.links if link.context.trace_id == trace_id]
        if root.context.trace_id != trace_id and linked:
            targets = ", ".join(names.get(link.context.span_id, "?") for link in linked)
            out.append(f"  ⇢ linked to {targets} from trace {root.context.trace_id:032x}:")
            walk(root, 2)
    return "\n".join(out)


async def test_one_post_is_one_trace_through_the_relay_and_both_consumers(
    stack: Stack, database_url: str, topic: str, es_prefix: str
) -> None:
    suffix = uuid.uuid4().hex[:8]
    counter_group, indexer_group = f"counter-{suffix}", f"indexer-{suffix}"
    await create_dead_letter_topics(stack.kafka_bootstrap, topic, [counter_group, indexer_group])
    exporter = InMemorySpanExporter()
    assert tracing.configure_tracing("blog-platform", exporter=exporter, set_global=False)
    try:
        publisher = create_publisher(
            PublisherSettings(
                database_url=database_url,
                kafka_bootstrap_servers=stack.kafka_bootstrap,
                topic=topic,
                relay_poll_interval_s=0.5,
            )
        )
        counter = create_counter(
            CounterSettings(
                database_url=database_url,
                kafka_bootstrap_servers=stack.kafka_bootstrap,
                topic=topic,
                group_id=counter_group,
            )
        )
        indexer = create_indexer(
            IndexerSettings(
                es_url=stack.es_url,
                kafka_bootstrap_servers=stack.kafka_bootstrap,
                topic=topic,
                group_id=indexer_group,
                index_alias=f"{es_prefix}blogs",
            )
        )
        async with (
            serving(publisher, "publisher") as pub,
            serving(counter, "counter") as cnt,
            serving(indexer, "indexer") as idx,
        ):
            db = await asyncpg.connect(database_url)
            try:
                author_id, token = await create_author(db, "tracer")
            finally:
                await db.close()
            response = await pub.post(
                "/blogs",
                json={"title": "Traced", "body": "One trace.", "tags": ["otel"]},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 202
            blog_id = response.json()["id"]

            async def counted_and_indexed() -> bool:
                stats = (await cnt.get(f"/authors/{author_id}/stats")).json()
                return stats["total_blogs"] == 1 and (
                    (await idx.get(f"/blogs/{blog_id}")).status_code == 200
                )

            await wait_until(counted_and_indexed, timeout=TIMEOUT_S, what="counted and indexed")

            def batch_spans_done() -> list[ReadableSpan]:
                return [
                    s
                    for s in exporter.get_finished_spans()
                    if s.name == f"{topic} process" and s.links
                ]

            async def both_batches_ended() -> bool:  # a span is exported once it ends
                groups = {
                    (s.attributes or {}).get("messaging.consumer.group.name")
                    for s in batch_spans_done()
                }
                return {counter_group, indexer_group} <= groups

            await wait_until(both_batches_ended, timeout=TIMEOUT_S, what="both batch spans")
        spans = list(exporter.get_finished_spans())
    finally:
        tracing.shutdown_tracing()

    (request,) = [s for s in spans if s.name == "POST /blogs" and s.kind == SpanKind.SERVER]
    trace_id = request.context.trace_id
    print(tree(spans, trace_id))
    (send,) = [s for s in spans if s.name == f"{topic} send"]
    assert send.kind == SpanKind.PRODUCER
    assert send.context.trace_id == trace_id
    assert send.parent is not None
    assert send.parent.span_id == request.context.span_id  # the relay sent it in the POST's context
    receives = [s for s in spans if s.name == f"{topic} receive" and s.parent is not None]
    receives = [s for s in receives if s.parent and s.parent.span_id == send.context.span_id]
    assert len(receives) == 2  # one per group, children of the send span
    assert {s.context.trace_id for s in receives} == {trace_id}
    for group in (counter_group, indexer_group):
        (batch,) = [
            s
            for s in spans
            if s.name == f"{topic} process"
            and (s.attributes or {}).get("messaging.consumer.group.name") == group
            and s.links
        ]
        assert [(link.context.trace_id, link.context.span_id) for link in batch.links] == [
            (trace_id, send.context.span_id)
        ]
    # The counter's database work happened inside its batch span.
    counter_batch = next(
        s
        for s in spans
        if s.name == f"{topic} process"
        and (s.attributes or {}).get("messaging.consumer.group.name") == counter_group
        and s.links
    )
    assert any(
        s.parent and s.parent.span_id == counter_batch.context.span_id
        for s in spans
        if s.kind == SpanKind.CLIENT
    )

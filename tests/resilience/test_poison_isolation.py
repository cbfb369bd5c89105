"""Poison that never stops a group: a record the contract refuses, a document Elasticsearch
refuses, and an event the handler fails on for its own reasons are each dead-lettered once, with
the reason, by the group that cannot apply it; everything around them is applied, and the groups'
lag returns to 0.

Each case prints a `MEASURED` line: the `dlq-reason` that landed and how long the group was held
back (the consumer's own isolation time, and the time until the poison's offset was committed).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from elasticsearch import AsyncElasticsearch

from blog_events import BlogPublished, encode_event, new_envelope
from blog_testkit import ServiceProcess, Stack, wait_for_zero_lag, wait_until
from blog_testkit.faults import FAULTY_SERVICE_MODULE, INJECTED_FAILURE, faulty_service_env
from tests.pipeline import Author, Pipeline

from .support import (
    committed_past,
    dead_letters_of,
    dlq_header,
    metric,
    post_accepted,
    settings_of,
    unsent_outbox_rows,
)

pytestmark = pytest.mark.e2e

DEAD_LETTERED = "blog_consumer_events_dead_lettered_total"
ISOLATION_SECONDS = "blog_consumer_isolation_seconds_sum"
SETTLE_S = 90.0


async def _is(value: Any, expected: object) -> bool:
    return bool(await value == expected)


async def post(pipeline: Pipeline, author: Author, title: str, tags: list[str]) -> str:
    response = await pipeline.http.post(
        f"{pipeline.publisher.url}/blogs",
        json={"title": title, "body": f"The body of {title}.", "tags": tags},
        headers=author.headers,
    )
    assert response.status_code == 202, response.text
    blog_id: str = response.json()["id"]
    return blog_id


async def all_relayed(pipeline: Pipeline) -> None:
    database_url = pipeline.publisher_env["PUBLISHER_DATABASE_URL"]
    await wait_until(
        lambda: _is(unsent_outbox_rows(database_url), 0), timeout=60, what="outbox relayed"
    )


async def settled(pipeline: Pipeline, stack: Stack, topic: str) -> None:
    for service in (pipeline.counter, pipeline.indexer):
        group = settings_of(service).group_id
        await wait_for_zero_lag(stack.kafka_bootstrap, group, topic, SETTLE_S)


async def measured_isolation(pipeline: Pipeline, service: ServiceProcess) -> float:
    group = settings_of(service).group_id
    return await metric(pipeline.http, service.url, ISOLATION_SECONDS, group=group)


def report(case: str, group: str, reason: str, **figures: float) -> None:
    numbers = " ".join(f"{name}={value:.3f}s" for name, value in figures.items())
    print(f"\nMEASURED case={case!r} group={group} {numbers}\n  dlq-reason: {reason}")


async def test_an_event_beyond_the_contract_is_dead_lettered_by_both_groups(
    pipeline: Pipeline, stack: Stack, topic: str
) -> None:
    """`version: 3000000000` (the counter stores int): refused by the contract at decoding."""
    author = await pipeline.create_author("version-overflow")
    expected = {await post_accepted(pipeline, author, f"before {n}"): 1 for n in range(3)}
    neighbour = next(iter(expected))
    await all_relayed(pipeline)
    await settled(pipeline, stack, topic)

    envelope = json.loads(
        encode_event(
            new_envelope(
                BlogPublished(
                    blog_id=uuid.uuid4(),
                    author_id=uuid.UUID(author.author_id),
                    version=1,
                    title="A version no consumer can store",
                    body="body",
                    published_at=datetime.now(UTC),
                )
            )
        )
    )
    envelope["payload"]["version"] = 3_000_000_000
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        # Keyed like a good blog: same partition, and that blog's update comes after it.
        sent = await producer.send_and_wait(
            topic, key=neighbour.encode(), value=json.dumps(envelope).encode()
        )
    finally:
        await producer.stop()
    produced_at = time.monotonic()

    committed_after: dict[str, float] = {}
    for service in (pipeline.counter, pipeline.indexer):
        group = settings_of(service).group_id
        await wait_until(
            lambda g=group: committed_past(  # type: ignore[misc]
                stack.kafka_bootstrap, g, topic, sent.partition, sent.offset
            ),
            timeout=SETTLE_S,
            what=f"{group} committed past the poison",
            interval=0.05,
        )
        committed_after[group] = time.monotonic() - produced_at

    response = await pipeline.http.put(
        f"{pipeline.publisher.url}/blogs/{neighbour}",
        json={"title": "Updated after the poison", "body": "Edited.", "tags": []},
        headers=author.headers,
    )
    assert response.status_code == 202, response.text
    expected[neighbour] = 2
    expected[await post_accepted(pipeline, author, "after")] = 1
    await wait_until(
        lambda: _is(pipeline.indexed(author), expected), timeout=SETTLE_S, what="indexed"
    )
    await wait_until(
        lambda: _is(pipeline.total_blogs(author), len(expected)), timeout=SETTLE_S, what="counted"
    )
    await all_relayed(pipeline)
    await settled(pipeline, stack, topic)

    for service in (pipeline.counter, pipeline.indexer):
        group = settings_of(service).group_id
        [dead] = await dead_letters_of(stack.kafka_bootstrap, service)
        assert (dead.partition, dead.value) == (dead.partition, json.dumps(envelope).encode())
        assert dlq_header(dead, "dlq-source-offset") == str(sent.offset)
        reason = dlq_header(dead, "dlq-reason")
        assert "version" in reason
        assert "less than or equal to 2147483647" in reason
        assert await metric(pipeline.http, service.url, DEAD_LETTERED, group=group) == 1
        assert await measured_isolation(pipeline, service) == 0  # refused before any handler
        report(
            "version 3000000000",
            group,
            reason,
            poison_committed_after=committed_after[group],
        )
        ready = await pipeline.http.get(f"{service.url}/readyz")
        assert ready.status_code == 200, ready.text


async def test_a_document_elasticsearch_refuses_is_dead_lettered_by_the_indexer_alone(
    pipeline: Pipeline, stack: Stack, topic: str
) -> None:
    """A valid event whose document breaks the index's mapping (a numeric sub-field added to
    `tags`): Elasticsearch refuses that one item of the bulk with a 400."""
    indexer, counter = pipeline.indexer, pipeline.counter
    author = await pipeline.create_author("es-rejected")
    alias = indexer.env["INDEXER_INDEX_ALIAS"]
    es = AsyncElasticsearch(stack.es_url)
    try:
        await es.indices.put_mapping(
            index=alias,
            properties={"tags": {"type": "keyword", "fields": {"code": {"type": "integer"}}}},
        )
    finally:
        await es.close()
    # Stopped, so that the poison arrives in one batch with the records around it.
    assert await indexer.terminate() == 0
    expected = {await post(pipeline, author, f"before {n}", ["1"]): 1 for n in range(6)}
    poison = await post(pipeline, author, "Tagged with a word", ["not-a-number"])
    for n in range(6):
        expected[await post(pipeline, author, f"after {n}", [])] = 1
    first = next(iter(expected))
    response = await pipeline.http.put(
        f"{pipeline.publisher.url}/blogs/{first}",
        json={"title": "Updated after the poison", "body": "Edited.", "tags": ["2"]},
        headers=author.headers,
    )
    assert response.status_code == 202, response.text
    expected[first] = 2
    await all_relayed(pipeline)

    started = time.monotonic()
    await indexer.start()
    await settled(pipeline, stack, topic)
    drained_in = time.monotonic() - started

    # Searchable after the index's refresh interval.
    await wait_until(lambda: _is(pipeline.indexed(author), expected), timeout=30, what="indexed")
    # The counter has nothing against it: counted like the others.
    assert await pipeline.total_blogs(author) == len(expected) + 1
    assert await dead_letters_of(stack.kafka_bootstrap, counter) == []
    [dead] = await dead_letters_of(stack.kafka_bootstrap, indexer)
    assert dead.key == poison.encode()
    reason = dlq_header(dead, "dlq-reason")
    assert reason.startswith(f"Elasticsearch rejected the document of blog {poison}: 400 ")
    assert "tags.code" in reason
    group = settings_of(indexer).group_id
    assert await metric(pipeline.http, indexer.url, DEAD_LETTERED, group=group) == 1
    isolation_s = await measured_isolation(pipeline, indexer)
    assert isolation_s > 0
    report(
        "document refused by Elasticsearch",
        group,
        reason,
        isolation=isolation_s,
        start_to_lag_0_incl_group_join=drained_in,
    )
    ready = await pipeline.http.get(f"{indexer.url}/readyz")
    assert ready.status_code == 200, ready.text


async def test_a_handler_failing_for_one_blog_only_dead_letters_that_event(
    pipeline: Pipeline,
    stack: Stack,
    topic: str,
    service_processes: Callable[..., ServiceProcess],
) -> None:
    """The counter's handler, wrapped to fail whenever its batch holds one given blog."""
    author = await pipeline.create_author("failing-for-one")
    poison_blog = uuid.uuid4()
    counter = pipeline.counter
    assert await counter.terminate() == 0
    faulty = service_processes(
        "counter-failing-for-one",
        FAULTY_SERVICE_MODULE,
        {
            **counter.env,
            **faulty_service_env("counter", counter.port, fail_keys=[str(poison_blog)]),
        },
        counter.port,
    )
    pipeline.counter = faulty

    expected = {await post_accepted(pipeline, author, f"before {n}"): 1 for n in range(6)}
    envelope = new_envelope(
        BlogPublished(
            blog_id=poison_blog,
            author_id=uuid.UUID(author.author_id),
            version=1,
            title="The counter fails on this one",
            body="body",
            published_at=datetime.now(UTC),
        )
    )
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(
            topic, key=envelope.key.encode(), value=encode_event(envelope)
        )
    finally:
        await producer.stop()
    for n in range(6):
        expected[await post_accepted(pipeline, author, f"after {n}")] = 1
    await all_relayed(pipeline)

    started = time.monotonic()
    await faulty.start()
    await settled(pipeline, stack, topic)
    drained_in = time.monotonic() - started
    try:
        # Everything but the poison counted; the indexer (unwrapped) has it too.
        assert await pipeline.total_blogs(author) == len(expected)
        await wait_until(
            lambda: _is(pipeline.indexed(author), {**expected, str(poison_blog): 1}),
            timeout=30,
            what="indexed",
        )
        [dead] = await dead_letters_of(stack.kafka_bootstrap, faulty)
        assert (dead.partition, dead.key) == (sent.partition, str(poison_blog).encode())
        assert dlq_header(dead, "dlq-source-offset") == str(sent.offset)
        reason = dlq_header(dead, "dlq-reason")
        assert reason == f"InjectedFault: {INJECTED_FAILURE} {poison_blog}"
        assert await dead_letters_of(stack.kafka_bootstrap, pipeline.indexer) == []
        group = settings_of(faulty).group_id
        assert await metric(pipeline.http, faulty.url, DEAD_LETTERED, group=group) == 1
        isolation_s = await measured_isolation(pipeline, faulty)
        assert isolation_s > 0
        report(
            "handler failing for one blog id",
            group,
            reason,
            isolation=isolation_s,
            start_to_lag_0_incl_group_join=drained_in,
        )
        ready = await pipeline.http.get(f"{faulty.url}/readyz")
        assert ready.status_code == 200, ready.text
    finally:
        assert await faulty.terminate() == 0

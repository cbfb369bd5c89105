"""Dependency outages, with the real servers stopped and started again (`stack.sh stop|start`):

- Elasticsearch down: the indexer backs off (bounded exponential with jitter), commits nothing,
  stays up (no crash loop), and catches up once it is back;
- PostgreSQL down: the publisher answers 503 + Retry-After and writes nothing half; the counter
  pauses (commits nothing) and resumes; both recover by themselves;
- Kafka down: POSTs still succeed (outbox) and are delivered once it is back.

These stop a server that every other test shares: marked `outage`, run them alone
(`pytest -m outage`, with no other pytest running against the stack).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer

from blog_events import BlogPublished, encode_event, new_envelope
from blog_testkit import Stack, wait_until
from tests.pipeline import Pipeline

from .support import (
    ServerOutage,
    committed_by_partition,
    fully_committed,
    metric,
    post_accepted,
    post_blog,
    publisher_rows,
    retry_lines,
    unsent_outbox_rows,
)

pytestmark = [pytest.mark.e2e, pytest.mark.outage, pytest.mark.timeout(600)]

# How long each server stays down. The issue asks for 60 s (Elasticsearch) and 30 s
# (PostgreSQL); the behaviour shown is the same for shorter outages if CI needs them.
ES_OUTAGE_S = 60.0
PG_OUTAGE_S = 30.0
# The batch consumer's retry ceiling (ConsumerConfig.retry_max_s default).
RETRY_MAX_S = 10.0
# Pace of the writes attempted during an outage (load, not synchronisation).
WRITE_INTERVAL_S = 1.0


async def _is(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc,no-any-return]


async def test_elasticsearch_outage(pipeline: Pipeline, stack: Stack, topic: str) -> None:
    indexer, group = pipeline.indexer, pipeline.indexer.env["INDEXER_GROUP_ID"]
    author = await pipeline.create_author("es-outage")
    expected = {await post_accepted(pipeline, author, f"before {n}"): 1 for n in range(3)}
    await wait_until(lambda: _is(pipeline.indexed(author), expected), timeout=60, what="indexed")
    await wait_until(
        lambda: fully_committed(stack.kafka_bootstrap, group, topic), timeout=30, what="committed"
    )
    before = await committed_by_partition(stack.kafka_bootstrap, group, topic)
    indexer_pid = indexer.pid
    outage = ServerOutage("elasticsearch")
    try:
        await outage.begin()
        loop = asyncio.get_running_loop()
        back_at = loop.time() + ES_OUTAGE_S
        # Writes keep being accepted: the publisher does not depend on Elasticsearch.
        for n in range(5):
            expected[await post_accepted(pipeline, author, f"during {n}")] = 1
        await wait_until(
            lambda: metric(
                pipeline.http, indexer.url, "blog_consumer_events_failed_total", group=group
            ),
            timeout=60,
            what="the indexer failing on its batch",
        )
        not_ready = await pipeline.http.get(f"{indexer.url}/readyz")
        assert not_ready.status_code == 503, not_ready.text
        await asyncio.sleep(max(0.0, back_at - loop.time()))  # the outage itself, not a wait

        # During the whole outage: the same process, alive, committing nothing.
        assert indexer.running, indexer.log_tail()
        assert indexer.pid == indexer_pid, "restarted: a crash loop"
        assert (await pipeline.http.get(f"{indexer.url}/healthz")).status_code == 200
        assert await committed_by_partition(stack.kafka_bootstrap, group, topic) == before
        await outage.end()
    finally:
        await outage.end()

    await wait_until(lambda: _is(pipeline.indexed(author), expected), timeout=120, what="caught up")
    await wait_until(
        lambda: fully_committed(stack.kafka_bootstrap, group, topic), timeout=60, what="committed"
    )
    ready = await pipeline.http.get(f"{indexer.url}/readyz")
    assert ready.status_code == 200, ready.text

    retries = retry_lines(indexer.log_text())
    assert len(retries) >= 3, indexer.log_tail()
    delays = [r.delay_s for r in retries]
    # Bounded, exponential (the ceiling grew past the first one), jittered (not all the same),
    # and no hot loop: far fewer attempts than seconds of outage.
    assert max(delays) <= RETRY_MAX_S
    assert max(delays) > 0.2 * 2
    assert len(set(delays)) > 1
    assert len(retries) <= ES_OUTAGE_S
    assert [r.attempt for r in retries] == list(range(1, len(retries) + 1))


async def test_postgres_outage(pipeline: Pipeline, stack: Stack, topic: str) -> None:
    counter, group = pipeline.counter, pipeline.counter.env["COUNTER_GROUP_ID"]
    database_url = pipeline.publisher_env["PUBLISHER_DATABASE_URL"]
    author = await pipeline.create_author("pg-outage")
    accepted = {f"before {n}" for n in range(3)}
    for title in accepted:
        await post_accepted(pipeline, author, title)
    await wait_until(lambda: _is(pipeline.total_blogs(author), 3), timeout=60, what="counted")
    # Events that reach the counter while its database is down, from another producer.
    other_author = uuid.uuid4()
    counter_pid = counter.pid

    refused: list[str] = []
    outage = ServerOutage("postgres")
    try:
        await outage.begin()
        loop = asyncio.get_running_loop()
        back_at = loop.time() + PG_OUTAGE_S
        await produce_events(stack, topic, other_author, count=10)
        n = 0
        while loop.time() < back_at:
            title = f"during {n}"
            n += 1
            response = await post_blog(pipeline, author, title)
            if response.status_code == 202:  # only possible at the very edge of the outage
                accepted.add(title)
                continue
            assert response.status_code == 503, (response.status_code, response.text)
            assert int(response.headers["Retry-After"]) > 0
            refused.append(title)
            assert counter.running, counter.log_tail()
            assert counter.pid == counter_pid, "restarted: a crash loop"
            await asyncio.sleep(WRITE_INTERVAL_S)
        assert refused, "the publisher refused writes while PostgreSQL was down"
        # The counter stayed up, not ready, and committed none of the events it could not apply.
        assert (await pipeline.http.get(f"{counter.url}/readyz")).status_code == 503
        assert (await pipeline.http.get(f"{pipeline.publisher.url}/readyz")).status_code == 503
        assert await metric(
            pipeline.http, counter.url, "blog_consumer_events_failed_total", group=group
        )
        assert not await fully_committed(stack.kafka_bootstrap, group, topic)
        await outage.end()
    finally:
        await outage.end()

    # Both recover by themselves: no restart.
    async def accepts_writes() -> bool:
        response = await post_blog(pipeline, author, "after")
        return response.status_code == 202

    await wait_until(accepts_writes, timeout=60, what="the publisher accepting writes again")
    accepted.add("after")
    assert counter.pid == counter_pid
    assert pipeline.publisher.running

    # No half writes: every accepted blog has its one outbox row, no refused one left a row.
    rows = await publisher_rows(database_url, author.author_id)
    assert set(rows) == accepted
    assert all(versions == [1] for versions in rows.values()), rows
    await wait_until(
        lambda: _is(pipeline.total_blogs(author), len(accepted)), timeout=60, what="counted"
    )

    # The other author's events sit on other partitions: counted by their own time.
    async def others_counted() -> int:
        response = await pipeline.http.get(f"{counter.url}/authors/{other_author}/stats")
        total: int = response.json()["total_blogs"]
        return total

    await wait_until(lambda: _is(others_counted(), 10), timeout=60, what="the other author's 10")
    await wait_until(
        lambda: fully_committed(stack.kafka_bootstrap, group, topic), timeout=60, what="committed"
    )
    assert (await pipeline.http.get(f"{counter.url}/readyz")).status_code == 200


async def produce_events(stack: Stack, topic: str, author_id: uuid.UUID, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(count):
            envelope = new_envelope(
                BlogPublished(
                    blog_id=uuid.uuid4(),
                    author_id=author_id,
                    version=1,
                    title=f"Arrived during the outage {n}",
                    body="body",
                    published_at=datetime.now(UTC),
                )
            )
            await producer.send_and_wait(
                topic, key=envelope.key.encode(), value=encode_event(envelope)
            )
    finally:
        await producer.stop()


async def test_kafka_outage(pipeline: Pipeline, stack: Stack, topic: str) -> None:
    database_url = pipeline.publisher_env["PUBLISHER_DATABASE_URL"]
    author = await pipeline.create_author("kafka-outage")
    expected = {await post_accepted(pipeline, author, f"before {n}"): 1 for n in range(3)}
    await wait_until(lambda: _is(pipeline.indexed(author), expected), timeout=60, what="indexed")
    outage = ServerOutage("kafka")
    try:
        await outage.begin()
        for n in range(10):
            expected[await post_accepted(pipeline, author, f"during {n}")] = 1
        # Durable in the outbox, waiting for Kafka.
        assert await unsent_outbox_rows(database_url) >= 10
        ready = await pipeline.http.get(f"{pipeline.publisher.url}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["kafka"] == "unreachable", ready.text
        await outage.end()
    finally:
        await outage.end()

    await wait_until(
        lambda: _is(unsent_outbox_rows(database_url), 0), timeout=120, what="outbox delivered"
    )
    await wait_until(
        lambda: _is(pipeline.total_blogs(author), len(expected)), timeout=120, what="counted"
    )
    await wait_until(lambda: _is(pipeline.indexed(author), expected), timeout=120, what="indexed")
    for service in (pipeline.publisher, pipeline.counter, pipeline.indexer):
        assert service.running, service.log_tail()
    for group in (
        pipeline.counter.env["COUNTER_GROUP_ID"],
        pipeline.indexer.env["INDEXER_GROUP_ID"],
    ):
        await wait_until(
            lambda g=group: fully_committed(stack.kafka_bootstrap, g, topic),  # type: ignore[misc]
            timeout=60,
            what=f"{group} committed",
        )
    # Exactly once: the counts did not overshoot after everything was committed.
    assert await pipeline.total_blogs(author) == len(expected)

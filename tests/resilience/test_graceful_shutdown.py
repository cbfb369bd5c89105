"""SIGTERM to a consumer in the middle of a batch: it finishes the batch (and commits it) or
abandons it uncommitted, leaves the group at once, exits 0; after a restart nothing is lost or
counted twice.

"In the middle of a batch" is made certain, not guessed: the counter's batch transaction is held
on a table lock taken by the test (seen in pg_locks), the indexer's bulk is refused by an index
write block (seen in its failure metric)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from elasticsearch import AsyncElasticsearch

from blog_testkit import ServiceProcess, Stack, wait_until
from tests.pipeline import Author, Pipeline

from .support import (
    committed_by_partition,
    fully_committed,
    member_count,
    metric,
    post_accepted,
    unsent_outbox_rows,
)

pytestmark = pytest.mark.e2e

LARGE_BATCH = 300
AUTHORS = 4
# uvicorn's line once SIGTERM is being handled and the lifespan shutdown (consumer stop) began.
SHUTDOWN_BEGAN = "Waiting for application shutdown"
# The counter's line when the batch in hand did not finish in time and was cancelled.
STOP_TIMED_OUT = "consumer did not stop within"


async def post_many(pipeline: Pipeline, author: Author, count: int, prefix: str) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 25):
        chunk = range(start, min(start + 25, count))
        ids += await asyncio.gather(
            *(post_accepted(pipeline, author, f"{prefix} {n}") for n in chunk)
        )
    return ids


async def log_contains(service: ServiceProcess, text: str) -> bool:
    return text in service.log_text()


@pytest.fixture
async def locker(pipeline: Pipeline) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the pipeline's database as the counter's role (owner of its tables)."""
    connection = await asyncpg.connect(pipeline.counter.env["COUNTER_DATABASE_URL"])
    yield connection
    await connection.close()


async def counted_blogs(connection: asyncpg.Connection) -> int:
    """Blogs the counter has applied (each test blog has one event: version 1)."""
    count: int = await connection.fetchval("SELECT count(*) FROM counter.blog_state")
    return count


@pytest.mark.parametrize("outcome", ["finishes", "abandons"])
async def test_sigterm_while_the_counter_applies_a_batch(
    pipeline: Pipeline, stack: Stack, topic: str, locker: asyncpg.Connection, outcome: str
) -> None:
    counter, group = pipeline.counter, pipeline.counter.env["COUNTER_GROUP_ID"]
    # Several authors: the publisher limits the write rate per author.
    authors = [await pipeline.create_author(f"interrupted-{n}") for n in range(AUTHORS)]
    assert await counter.terminate() == 0
    for author in authors:
        await post_many(pipeline, author, LARGE_BATCH // AUTHORS, "queued while counter is down")
    await wait_until(
        lambda: _equals(unsent_outbox_rows(pipeline.publisher_env["PUBLISHER_DATABASE_URL"]), 0),
        timeout=60,
        what="every event relayed to Kafka",
    )

    # The batch's transaction will wait on this lock: the consumer is then provably mid-batch.
    lock = locker.transaction()
    await lock.start()
    try:
        await locker.execute("LOCK TABLE counter.blog_state IN EXCLUSIVE MODE")
        await counter.start()

        async def batch_waiting_on_the_lock() -> bool:
            waiting: int = await locker.fetchval(
                "SELECT count(*) FROM pg_locks"
                " WHERE NOT granted AND relation = 'counter.blog_state'::regclass"
            )
            return waiting > 0

        await wait_until(batch_waiting_on_the_lock, timeout=60, what="the batch mid-transaction")
        in_hand = await metric(
            pipeline.http, counter.url, "blog_consumer_batch_size_sum", group=group
        )
        assert in_hand > 1, "a batch of several events is in hand"

        stopping = asyncio.create_task(counter.terminate(timeout=90))
        await wait_until(
            lambda: log_contains(counter, SHUTDOWN_BEGAN), timeout=30, what="shutdown begun"
        )
        if outcome == "abandons":
            # Held until the counter gives up on the batch in hand.
            await wait_until(
                lambda: log_contains(counter, STOP_TIMED_OUT), timeout=60, what="batch abandoned"
            )
    finally:
        await lock.rollback()
    assert await stopping == 0, counter.log_tail()
    # Left the group (a killed member would stay in it until its session times out).
    assert await member_count(stack.kafka_bootstrap, group) == 0
    committed_all = await fully_committed(stack.kafka_bootstrap, group, topic)
    if outcome == "finishes":
        # The batch in hand is every record on one broker, but on a 3-node cluster only those of
        # the brokers whose fetch answered first: what was applied is exactly what was committed.
        committed = sum(
            (await committed_by_partition(stack.kafka_bootstrap, group, topic)).values()
        )
        in_hand = await counted_blogs(locker)
        assert in_hand == committed > 0, "the finished batch was committed before leaving"
        assert committed_all or stack.kafka_nodes > 1
    else:
        assert not committed_all, "the abandoned batch was not committed"

    await counter.start()
    await wait_until(
        lambda: fully_committed(stack.kafka_bootstrap, group, topic),
        timeout=60,
        what="the counter caught up",
    )
    for author in authors:
        assert await pipeline.total_blogs(author) == LARGE_BATCH // AUTHORS
    applied: int = await locker.fetchval("SELECT count(*) FROM counter.blog_state")
    assert applied == LARGE_BATCH


async def test_sigterm_while_the_indexer_retries_a_batch(
    pipeline: Pipeline, stack: Stack, topic: str, es_prefix: str
) -> None:
    indexer, group = pipeline.indexer, pipeline.indexer.env["INDEXER_GROUP_ID"]
    author = await pipeline.create_author("interrupted-indexer")
    expected = dict.fromkeys(await post_many(pipeline, author, 3, "before"), 1)
    await wait_until(
        lambda: _equals(pipeline.indexed(author), expected), timeout=60, what="first blogs"
    )
    await wait_until(
        lambda: fully_committed(stack.kafka_bootstrap, group, topic),
        timeout=30,
        what="first blogs committed",
    )
    before = await committed_by_partition(stack.kafka_bootstrap, group, topic)

    es = AsyncElasticsearch(stack.es_url)
    alias = indexer.env["INDEXER_INDEX_ALIAS"]
    indices = list((await es.indices.get_alias(name=alias)).body)
    await es.indices.put_settings(index=indices, settings={"index.blocks.write": True})
    try:
        for blog_id in await post_many(pipeline, author, 50, "refused"):
            expected[blog_id] = 1
        await wait_until(
            lambda: metric(
                pipeline.http, indexer.url, "blog_consumer_events_failed_total", group=group
            ),
            timeout=60,
            what="the indexer's batch failing and retrying",
        )
        assert await indexer.terminate(timeout=30) == 0, indexer.log_tail()
        assert "abandoning a failing batch" in indexer.log_text()
        assert await member_count(stack.kafka_bootstrap, group) == 0
        assert await committed_by_partition(stack.kafka_bootstrap, group, topic) == before
    finally:
        await es.indices.put_settings(index=indices, settings={"index.blocks.write": None})
        await es.close()

    await indexer.start()
    await wait_until(
        lambda: _equals(pipeline.indexed(author), expected), timeout=60, what="all indexed"
    )
    await wait_until(
        lambda: fully_committed(stack.kafka_bootstrap, group, topic),
        timeout=30,
        what="the indexer caught up",
    )


async def _equals(value: object, expected: object) -> bool:
    return await value == expected  # type: ignore[misc,no-any-return]

"""A group's redrive against the running services: `python -m counter redrive` moves the
counter's dead letters to the counter's retry topic only; what the counter now understands is
applied like an original, the indexer group never sees any of it again, what is still bad is
dead-lettered again with its attempt count, and a record at the max-attempts limit is kept."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer

from blog_events import BlogPublished, encode_event, new_envelope
from blog_testkit import Stack, committed_offsets, read_topic, wait_until
from service_kit.consumer import dlq_headers
from service_kit.redrive import REDRIVE_ATTEMPTS_HEADER
from service_kit.topics import dead_letter_topic, retry_topic
from tests.pipeline import Pipeline

from .support import metric, post_accepted

pytestmark = pytest.mark.e2e

DEAD_LETTERED = "blog_consumer_events_dead_lettered_total"
STILL_POISON = b"\x00still not an event"


async def counter_redrive(pipeline: Pipeline, *args: str) -> str:
    """`python -m counter redrive` with the running counter's own settings (group, topic)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "counter", "redrive", *args,
        env={**os.environ, **pipeline.counter.env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_a_counter_redrive_feeds_the_counter_only(
    pipeline: Pipeline, stack: Stack, topic: str
) -> None:
    counter_group = pipeline.counter.env["COUNTER_GROUP_ID"]
    indexer_group = pipeline.indexer.env["INDEXER_GROUP_ID"]
    counter_dlq, counter_retry = (
        dead_letter_topic(topic, counter_group),
        retry_topic(topic, counter_group),
    )
    author = await pipeline.create_author("redriven")
    expected = {await post_accepted(pipeline, author, f"good {n}"): 1 for n in range(2)}

    async def dead_lettered(counter: int, indexer: int) -> bool:
        got = (
            await metric(pipeline.http, pipeline.counter.url, DEAD_LETTERED, group=counter_group),
            await metric(pipeline.http, pipeline.indexer.url, DEAD_LETTERED, group=indexer_group),
        )
        return got == (counter, indexer)

    # A valid event that an older counter could not parse (only the counter dead-lettered it:
    # the indexer indexed it long ago, and must not see it again), and a poison for good.
    fixed_blog = uuid.uuid4()
    fixed_event = new_envelope(
        BlogPublished(
            blog_id=fixed_blog,
            author_id=uuid.UUID(author.author_id),
            version=1,
            title="Dead-lettered by an older counter",
            body="Understood since the fix.",
            published_at=datetime.now(UTC),
        )
    )
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, key=b"poison", value=STILL_POISON)
        await wait_until(lambda: dead_lettered(1, 1), timeout=60, what="the poison dead-lettered")
        await producer.send_and_wait(
            counter_dlq,
            key=fixed_event.key.encode(),
            value=encode_event(fixed_event),
            headers=dlq_headers(
                reason="payload.tags: unknown to this version",
                group=counter_group,
                topic=topic,
                partition=0,
                offset=1_000_000,
                failed_at=datetime.now(UTC),
            ),
        )
    finally:
        await producer.stop()

    out = await counter_redrive(pipeline, "--max-attempts", "2")
    print(out)
    assert f"{counter_dlq} -> {counter_retry} (group {counter_group}-redrive): redriven 2" in out

    # The counter applies the redriven event like an original; the indexer never sees it.
    async def counted() -> bool:
        return await pipeline.total_blogs(author) == len(expected) + 1

    await wait_until(counted, timeout=60, what="the redriven event counted")
    await wait_until(lambda: dead_lettered(2, 1), timeout=60, what="the poison dead-lettered again")
    dead = await read_topic(stack.kafka_bootstrap, counter_dlq)
    again = [r for r in dead if REDRIVE_ATTEMPTS_HEADER in dict(r.headers)]
    assert [(r.value, dict(r.headers)[REDRIVE_ATTEMPTS_HEADER]) for r in again] == [
        (STILL_POISON, b"1")
    ]
    assert await pipeline.indexed(author) == expected
    indexer_topics = {
        tp.topic for tp in await committed_offsets(stack.kafka_bootstrap, indexer_group)
    }
    assert counter_retry not in indexer_topics
    assert await read_topic(stack.kafka_bootstrap, retry_topic(topic, indexer_group)) == []

    # Once more: the poison goes back (its second redrive), fails, and is then kept.
    out = await counter_redrive(pipeline, "--max-attempts", "2")
    print(out)
    assert "redriven 1, kept 0 at the limit of 2 attempt(s)" in out, out
    await wait_until(lambda: dead_lettered(3, 1), timeout=60, what="still poison")
    out = await counter_redrive(pipeline, "--max-attempts", "2")
    print(out)
    assert "redriven 0, kept 1 at the limit of 2 attempt(s)" in out, out
    assert "redriven 2 time(s), the limit is 2" in out
    # The redriven event counted once; the indexer dead-lettered the poison once, never again.
    assert await pipeline.total_blogs(author) == len(expected) + 1
    assert (
        await metric(pipeline.http, pipeline.indexer.url, DEAD_LETTERED, group=indexer_group) == 1
    )

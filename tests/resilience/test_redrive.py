"""The redrive command against the running services: dead letters go back to the source topic
once each, as they are; what the consumers now understand is counted and indexed, what is still
bad is dead-lettered again, and a second run only redrives what is new."""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from blog_events import BlogPublished, encode_event, new_envelope
from blog_testkit import Stack, read_topic, wait_until
from service_kit.consumer import dlq_headers
from service_kit.redrive import REDRIVEN_FROM_HEADER
from service_kit.topics import dead_letter_topic
from tests.pipeline import Pipeline

from .support import metric, post_accepted

pytestmark = pytest.mark.e2e

DEAD_LETTERED = "blog_consumer_events_dead_lettered_total"
STILL_POISON = b"\x00still not an event"


async def run_redrive(stack: Stack, dlq: str, group: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service_kit.redrive",
        "--bootstrap", stack.kafka_bootstrap, "--dlq-topic", dlq, "--group", group,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def read_dead_letters(stack: Stack, *dlqs: str) -> list[ConsumerRecord[bytes, bytes]]:
    return [record for dlq in dlqs for record in await read_topic(stack.kafka_bootstrap, dlq)]


async def test_redrive_after_a_fix(pipeline: Pipeline, stack: Stack, topic: str) -> None:
    counter_group = pipeline.counter.env["COUNTER_GROUP_ID"]
    indexer_group = pipeline.indexer.env["INDEXER_GROUP_ID"]
    # Each group's own dead-letter topic; one redrive run drains both.
    counter_dlq, indexer_dlq = (dead_letter_topic(topic, g) for g in (counter_group, indexer_group))
    dlq = f"{counter_dlq},{indexer_dlq}"
    redrive_group = f"redrive-{uuid.uuid4().hex[:8]}"
    author = await pipeline.create_author("redriven")
    expected = {await post_accepted(pipeline, author, f"good {n}"): 1 for n in range(2)}

    async def dead_lettered(count: int) -> bool:
        return (
            await metric(pipeline.http, pipeline.counter.url, DEAD_LETTERED, group=counter_group)
            == count
            and await metric(
                pipeline.http, pipeline.indexer.url, DEAD_LETTERED, group=indexer_group
            )
            == count
        )

    # A record that is poison for good, dead-lettered by both groups.
    fixed_blog = uuid.uuid4()
    fixed_event = new_envelope(
        BlogPublished(
            blog_id=fixed_blog,
            author_id=uuid.UUID(author.author_id),
            version=1,
            title="Dead-lettered by an older consumer",
            body="Understood since the fix.",
            published_at=datetime.now(UTC),
        )
    )
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, key=b"poison", value=STILL_POISON)
        await wait_until(lambda: dead_lettered(1), timeout=60, what="the poison dead-lettered")
        # A valid event that an older consumer version could not parse: both groups had
        # dead-lettered it (as they do, with these headers) before the fix was deployed.
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
        await producer.send_and_wait(
            indexer_dlq,
            key=fixed_event.key.encode(),
            value=encode_event(fixed_event),
            headers=dlq_headers(
                reason="payload.tags: unknown to this version",
                group=indexer_group,
                topic=topic,
                partition=0,
                offset=1_000_000,
                failed_at=datetime.now(UTC),
            ),
        )
    finally:
        await producer.stop()
    assert len(await read_dead_letters(stack, counter_dlq, indexer_dlq)) == 4

    out = await run_redrive(stack, dlq, redrive_group)
    assert "redriven 2, skipped 2 duplicate(s) and 0 without a source" in out, out
    assert out.count("same source record already redriven") == 2, out

    # Back in the source topic once each, as they were (key and value).
    redriven = [
        r
        for r in await read_topic(stack.kafka_bootstrap, topic)
        if REDRIVEN_FROM_HEADER in dict(r.headers)
    ]
    assert sorted((r.key, r.value) for r in redriven) == sorted(
        [(b"poison", STILL_POISON), (fixed_event.key.encode(), encode_event(fixed_event))]
    )

    # The understood event is counted and indexed; only the poison comes back to the DLQ.
    expected[str(fixed_blog)] = 1

    async def fixed_event_applied() -> bool:
        return await pipeline.total_blogs(author) == len(expected) and (
            await pipeline.indexed(author) == expected
        )

    await wait_until(fixed_event_applied, timeout=60, what="the redriven event applied")
    await wait_until(lambda: dead_lettered(2), timeout=60, what="the poison dead-lettered again")
    dead = await read_dead_letters(stack, counter_dlq, indexer_dlq)
    assert len(dead) == 6
    again = [r for r in dead if REDRIVEN_FROM_HEADER in dict(r.headers)]
    assert [r.value for r in again] == [STILL_POISON, STILL_POISON]

    # A second run skips the four dead letters already redriven.
    out = await run_redrive(stack, dlq, redrive_group)
    assert "redriven 1, skipped 1 duplicate(s) and 0 without a source" in out, out
    await wait_until(lambda: dead_lettered(3), timeout=60, what="still poison after a redrive")
    assert await pipeline.total_blogs(author) == len(expected)

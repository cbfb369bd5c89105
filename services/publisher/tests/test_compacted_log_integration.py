"""`blog-events` is a compacted log (issue 13): the publisher's topics file, applied to an existing
topic with the broker's default `delete` policy, turns it into exactly what the file declares; and
Kafka's cleaner, on a topic compacted within seconds, keeps the newest record of each blog."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer

import publisher.__main__ as entry_point
from blog_events import decode_event
from blog_testkit import Stack
from blog_testkit.events import BlogHistory
from blog_testkit.kafka import produce, read_topic
from blog_testkit.waiting import wait_until
from service_kit.kafka_admin import admin_client
from service_kit.topics import (
    default_topics_file,
    describe_topic_configs,
    load_topics_file,
    reconcile,
    topic_specs,
)

pytestmark = pytest.mark.integration


async def topic_configs(stack: Stack, name: str) -> dict[str, str]:
    async with admin_client(stack.kafka_bootstrap) as admin:
        configs = (await describe_topic_configs(admin, [name]))[name]
    return {key: value for key, (value, _source) in configs.items()}


async def test_topics_apply_turns_an_existing_topic_into_the_declared_compacted_log(
    stack: Stack, topic: str
) -> None:
    [declared] = [
        spec
        for spec in load_topics_file(default_topics_file(entry_point.__file__)).topics
        if spec.name == "blog-events"
    ]
    assert declared.config["cleanup.policy"] == "compact"
    assert (await topic_configs(stack, topic))["cleanup.policy"] == "delete"  # the fixture's

    # The same declaration, applied to the fixture's existing topic (not the stack's own).
    plan = await reconcile(stack.kafka_bootstrap, [declared.model_copy(update={"name": topic})])
    assert any("cleanup.policy: delete -> compact" in line for line in plan.lines())

    found = await topic_configs(stack, topic)
    for key, value in declared.config.items():
        if value != "auto":
            assert found[key] == value, key
    again = await reconcile(stack.kafka_bootstrap, [declared.model_copy(update={"name": topic})])
    assert again.empty


async def test_compaction_keeps_the_newest_record_of_each_blog(stack: Stack) -> None:
    name = f"test-compacted-{uuid.uuid4().hex[:12]}"
    # Compacted as soon as the cleaner looks (it checks every 15 s by default): tiny segments,
    # no minimum lag, any dirt makes a partition cleanable.
    quick = {
        "cleanup.policy": "compact",
        "segment.ms": "100",
        "min.compaction.lag.ms": "0",
        "min.cleanable.dirty.ratio": "0.001",
    }
    await reconcile(stack.kafka_bootstrap, topic_specs([name], 1, quick))
    try:
        history = BlogHistory()
        first = history.publish()
        second = history.publish()
        blog_a, blog_b = first.payload.blog_id, second.payload.blog_id
        await produce(
            stack.kafka_bootstrap,
            name,
            [
                first,
                second,
                history.update(blog_a, title="v2"),
                history.update(blog_b, title="v2"),
                history.update(blog_a, title="v3"),
                history.delete(blog_b),
            ],
        )
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        await producer.start()

        async def compacted() -> bool:
            # The active segment is never cleaned: a fresh record rolls it (segment.ms passed).
            await producer.send_and_wait(name, b"filler", key=b"filler")
            blogs = [
                decode_event(r.value) for r in await read_topic(stack.kafka_bootstrap, name)
                if r.key != b"filler"
            ]  # fmt: skip
            return len(blogs) == 2

        try:
            await wait_until(
                compacted, timeout=90, what="the cleaner compacted the topic", interval=2
            )
        finally:
            await producer.stop()
        newest = {
            event.payload.blog_id: event.payload
            for r in await read_topic(stack.kafka_bootstrap, name)
            if r.key != b"filler" and (event := decode_event(r.value))
        }
        assert newest == {blog_a: history.last[blog_a], blog_b: history.last[blog_b]}
        assert newest[blog_a].version == 3
        assert newest[blog_b].event_type == "BlogDeleted"
    finally:
        async with admin_client(stack.kafka_bootstrap) as admin:
            await asyncio.wait_for(admin.delete_topics([name]), 30)

"""The Kafka helpers against the real broker: what was produced, read back, committed, lagging."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from blog_events import decode_event
from blog_testkit import (
    BlogHistory,
    Stack,
    commit_offsets,
    committed_offsets,
    end_offsets,
    group_lag,
    group_members,
    produce,
    read_topic,
    topic_partitions,
    wait_for_zero_lag,
    wait_until,
)

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0


async def test_topic_partitions_are_all_of_a_fresh_topic_in_order(stack: Stack, topic: str) -> None:
    assert await topic_partitions(stack.kafka_bootstrap, topic) == [
        TopicPartition(topic, p) for p in range(6)
    ]
    with pytest.raises(LookupError, match="error code"):
        await topic_partitions(stack.kafka_bootstrap, f"{topic}-never-created")


async def test_produced_envelopes_are_counted_and_read_back_keyed_by_blog(
    stack: Stack, topic: str
) -> None:
    history = BlogHistory()
    first = history.publish(title="first")
    events = [first, history.publish(), history.update(first.payload.blog_id), first]
    assert await end_offsets(stack.kafka_bootstrap, topic) == {
        TopicPartition(topic, p): 0 for p in range(6)
    }

    await produce(stack.kafka_bootstrap, topic, events)

    ends = await end_offsets(stack.kafka_bootstrap, topic)
    assert len(ends) == 6
    assert sum(ends.values()) == 4  # the repeated envelope is a second message
    records = await read_topic(stack.kafka_bootstrap, topic)
    assert sorted(decode_event(r.value).event_id for r in records) == sorted(
        e.event_id for e in events
    )
    first_key = str(first.payload.blog_id).encode()
    of_first = [r for r in records if r.key == first_key]
    # One blog, one partition, in the order produced.
    assert len({r.partition for r in of_first}) == 1
    assert [decode_event(r.value).payload.version for r in of_first] == [1, 2, 1]


async def test_lag_follows_the_committed_offsets(stack: Stack, topic: str) -> None:
    bootstrap = stack.kafka_bootstrap
    group_id = f"{topic}-group"
    history = BlogHistory()
    await produce(bootstrap, topic, [history.publish() for _ in range(12)])
    ends = await end_offsets(bootstrap, topic)
    assert await committed_offsets(bootstrap, group_id) == {}
    assert await group_lag(bootstrap, group_id, topic) == 12

    busy = {tp: end for tp, end in ends.items() if end > 0}
    half_done = dict(list(busy.items())[: len(busy) // 2 or 1])
    await commit_offsets(bootstrap, group_id, half_done)
    assert await committed_offsets(bootstrap, group_id) == half_done
    assert await group_lag(bootstrap, group_id, topic) == 12 - sum(half_done.values())
    with pytest.raises(AssertionError, match=f"group {group_id} lag 0 on {topic}"):
        await wait_for_zero_lag(bootstrap, group_id, topic, 0.5)

    await commit_offsets(bootstrap, group_id, busy)
    await wait_for_zero_lag(bootstrap, group_id, topic, TIMEOUT_S)
    # Empty partitions need no commit: nothing of them is waiting.
    assert await committed_offsets(bootstrap, group_id) == busy
    assert await group_lag(bootstrap, group_id, topic) == 0


async def test_group_members_shows_a_subscribed_consumer(stack: Stack, topic: str) -> None:
    group_id = f"{topic}-members-{uuid.uuid4().hex[:6]}"
    unknown = await group_members(stack.kafka_bootstrap, group_id)
    assert unknown["members"] == []

    member = AIOKafkaConsumer(topic, bootstrap_servers=stack.kafka_bootstrap, group_id=group_id)
    await member.start()
    try:

        async def one_stable_member() -> Mapping[str, object] | None:
            group = await group_members(stack.kafka_bootstrap, group_id)
            stable = group["state"] == "Stable" and len(group["members"]) == 1
            return group if stable else None

        group = await wait_until(one_stable_member, timeout=TIMEOUT_S, what="1 stable member")
        assert group is not None
        assert group["group"] == group_id
    finally:
        await member.stop()

    async def left() -> bool:
        members: list[object] = (await group_members(stack.kafka_bootstrap, group_id))["members"]
        return members == []

    await wait_until(left, timeout=TIMEOUT_S, what="the member gone after stop")

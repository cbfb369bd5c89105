"""Kafka helpers for tests: produce envelopes, read a topic, and see how far a consumer group
has got (end offsets, committed offsets, lag, members). Each call opens and closes its own
clients, so they can be used from predicates polled by `wait_until`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from blog_events import Envelope, encode_event
from blog_testkit.waiting import wait_until
from service_kit.consumer import BatchConsumer
from service_kit.kafka_clients import client_options


@contextlib.asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options())
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def plain_consumer(bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer outside any group that commits nothing: for reading offsets and records."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **client_options()
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def running_batch_consumer(
    consumer: BatchConsumer[Any],
    stop_timeout: float = 30.0,
) -> AsyncIterator[asyncio.Task[None]]:
    """`consumer` started and running in a task (yielded); on exit it is stopped and the task
    awaited, each within `stop_timeout` seconds, so a consumer that hangs fails the test."""
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        yield task
    finally:
        await asyncio.wait_for(consumer.stop(), stop_timeout)
        await asyncio.wait_for(task, stop_timeout)


async def produce(bootstrap: str, topic: str, envelopes: Sequence[Envelope]) -> None:
    """Each envelope becomes its own Kafka message keyed by blog id (so a repeated envelope is a
    second message at a second offset, like a relay that re-sends)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **client_options())
    await producer.start()
    try:
        for envelope in envelopes:
            await producer.send(topic, encode_event(envelope), key=envelope.key.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def topic_partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The partitions of `topic`, in order. Asked of the broker: a consumer's metadata cache may
    not know a topic created moments ago."""
    async with admin_client(bootstrap) as admin:
        [described] = await admin.describe_topics([topic])
    if described["error_code"] != 0:
        raise LookupError(f"topic {topic}: describe_topics error code {described['error_code']}")
    return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """Log-end offset of every partition of `topic` (the sum is the number of records ever
    written, as long as nothing is compacted or deleted)."""
    partitions = await topic_partitions(bootstrap, topic)
    async with plain_consumer(bootstrap) as consumer:
        offsets: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    return offsets


async def committed_offsets(bootstrap: str, group_id: str) -> dict[TopicPartition, int]:
    """The offsets `group_id` has committed, on every topic (partitions never committed: absent)."""
    async with admin_client(bootstrap) as admin:
        committed = await admin.list_consumer_group_offsets(group_id)
    return {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}


async def commit_offsets(
    bootstrap: str, group_id: str, offsets: Mapping[TopicPartition, int]
) -> None:
    """Commit `offsets` for `group_id` as a consumer assigned those partitions by hand would (it
    joins no group, so the group must have no live members), then leave."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False, **client_options()
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(dict(offsets))
    finally:
        await consumer.stop()


async def group_lag(bootstrap: str, group_id: str, topic: str) -> int:
    """Records of `topic` the group has not committed yet (a partition never committed counts
    from offset 0)."""
    ends = await end_offsets(bootstrap, topic)
    committed = await committed_offsets(bootstrap, group_id)
    return sum(end - committed.get(tp, 0) for tp, end in ends.items())


async def wait_for_zero_lag(
    bootstrap: str,
    group_id: str,
    topic: str,
    timeout: float,  # noqa: ASYNC109 - a deadline for the polling, like wait_until's
) -> None:
    """Wait until the group has committed every record of `topic` written so far."""

    async def caught_up() -> bool:
        return await group_lag(bootstrap, group_id, topic) == 0

    await wait_until(caught_up, timeout=timeout, what=f"group {group_id} lag 0 on {topic}")


async def group_members(bootstrap: str, group_id: str) -> Mapping[str, Any]:
    """The group as DescribeGroups reports it: `state` ("Stable", "Empty", ...), `members`, ..."""
    async with admin_client(bootstrap) as admin:
        [response] = await admin.describe_consumer_groups([group_id])
    group: Mapping[str, Any] = response.to_object()["groups"][0]
    return group


async def read_topic(
    bootstrap: str,
    topic: str,
    timeout: float = 60.0,  # noqa: ASYNC109 - a deadline for reading, not for a single call
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` up to its end offsets now (no consumer group, nothing committed),
    partition by partition in offset order."""
    partitions = await topic_partitions(bootstrap, topic)
    async with plain_consumer(bootstrap) as reader:
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        ends = await reader.end_offsets(partitions)
        by_partition: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {
            tp: [] for tp in partitions
        }
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while [tp for tp in partitions if await reader.position(tp) < ends[tp]]:
            if loop.time() >= deadline:
                raise AssertionError(f"could not read {topic} to its end within {timeout:g}s")
            batches = await reader.getmany(timeout_ms=200)
            for tp, batch in batches.items():
                by_partition[tp].extend(r for r in batch if r.offset < ends[tp])
    return [record for tp in partitions for record in by_partition[tp]]

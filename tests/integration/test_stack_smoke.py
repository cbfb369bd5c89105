"""Smoke tests of the real stack `make up` starts: each server does its basic job."""

import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from elasticsearch import AsyncElasticsearch

from blog_testkit import Stack

pytestmark = pytest.mark.integration


async def test_kafka_produce_consume_round_trip(stack: Stack, topic: str) -> None:
    marker = uuid.uuid4().bytes
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, marker, key=b"smoke")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, sent.partition)
        consumer.assign([partition])
        consumer.seek(partition, sent.offset)
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert record.value == marker
    assert record.key == b"smoke"


async def test_postgres_write_read(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE smoke (id uuid PRIMARY KEY, note text NOT NULL)")
        row_id = uuid.uuid4()
        await conn.execute("INSERT INTO smoke VALUES ($1, $2)", row_id, "hello")
        assert await conn.fetchval("SELECT note FROM smoke WHERE id = $1", row_id) == "hello"
    finally:
        await conn.close()


async def test_elasticsearch_index_search(stack: Stack, es_prefix: str) -> None:
    index = f"{es_prefix}smoke"
    client = AsyncElasticsearch(stack.es_url)
    try:
        await client.index(
            index=index, id="1", document={"title": "Kafka consumer groups"}, refresh="wait_for"
        )
        found = await client.search(index=index, query={"match": {"title": "consumer"}})
    finally:
        await client.close()
    assert [hit["_id"] for hit in found["hits"]["hits"]] == ["1"]

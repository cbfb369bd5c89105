"""The isolation fixtures against the real stack: fresh resources, cleaned up afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from elasticsearch import AsyncElasticsearch

from blog_testkit import Stack, wait_until
from blog_testkit.plugin import create_dead_letter_topics
from service_kit.kafka_admin import admin_client
from service_kit.topics import describe_topic_configs

pytestmark = pytest.mark.integration

# Names seen by the first test of each pair, checked for cleanup by the second one.
_seen: dict[str, str] = {}


@pytest.fixture
async def es(stack: Stack) -> AsyncIterator[AsyncElasticsearch]:
    client = AsyncElasticsearch(stack.es_url)
    yield client
    await client.close()


async def test_database_url_is_a_fresh_empty_database(stack: Stack, database_url: str) -> None:
    assert database_url != stack.postgres_dsn
    connection = await asyncpg.connect(database_url)
    try:
        name = await connection.fetchval("SELECT current_database()")
        user_tables = await connection.fetchval(
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        await connection.execute("CREATE TABLE leftover (id int)")
    finally:
        await connection.close()
    assert name.startswith("test_")
    assert user_tables == 0
    _seen["database"] = name


async def test_database_is_dropped_afterwards(stack: Stack) -> None:
    if "database" not in _seen:
        pytest.skip("runs after test_database_url_is_a_fresh_empty_database")
    connection = await asyncpg.connect(stack.postgres_dsn)
    try:
        exists = await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", _seen["database"]
        )
    finally:
        await connection.close()
    assert not exists


async def test_topic_has_six_partitions_replicated_as_the_cluster_allows(
    stack: Stack, topic: str
) -> None:
    [dlq] = await create_dead_letter_topics(stack.kafka_bootstrap, topic, ["g"])
    assert dlq == f"{topic}.g.dlq"
    async with admin_client(stack.kafka_bootstrap) as admin:
        described = {t["topic"]: t for t in await admin.describe_topics([topic, dlq])}
        configs = await describe_topic_configs(admin, [topic, dlq])
        brokers = len((await admin.describe_cluster())["brokers"])
    copies = min(3, brokers)
    for name in (topic, dlq):
        assert described[name]["error_code"] == 0
        assert len(described[name]["partitions"]) == 6
        assert {len(p["replicas"]) for p in described[name]["partitions"]} == {copies}
        assert configs[name]["min.insync.replicas"][0] == ("2" if copies >= 3 else "1")
    _seen["topic"] = topic


async def test_topic_is_deleted_afterwards(stack: Stack) -> None:
    if "topic" not in _seen:
        pytest.skip("runs after test_topic_has_six_partitions_replicated_as_the_cluster_allows")

    async def both_gone() -> bool:
        # Deletion is asynchronous on the broker: metadata catches up shortly after.
        async with admin_client(stack.kafka_bootstrap) as admin:
            topics = set(await admin.list_topics())
        return not topics & {_seen["topic"], f"{_seen['topic']}.g.dlq"}

    await wait_until(both_gone, timeout=30, what=f"{_seen['topic']} (+ its DLQ) deleted")


async def test_es_prefix_is_fresh(es: AsyncElasticsearch, es_prefix: str) -> None:
    assert es_prefix == es_prefix.lower()
    existing = await es.indices.get(index=f"{es_prefix}*", allow_no_indices=True)
    assert dict(existing) == {}
    await es.indices.create(index=f"{es_prefix}-blogs-v1", aliases={f"{es_prefix}-blogs": {}})
    await es.indices.create(index=f"{es_prefix}-other")
    _seen["es_prefix"] = es_prefix


async def test_es_indices_are_deleted_afterwards(es: AsyncElasticsearch) -> None:
    if "es_prefix" not in _seen:
        pytest.skip("runs after test_es_prefix_is_fresh")
    left = await es.indices.get(index=f"{_seen['es_prefix']}*", allow_no_indices=True)
    assert dict(left) == {}

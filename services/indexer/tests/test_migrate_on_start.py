"""INDEXER_MIGRATE_ON_START=false: the service starts without creating its index, which
`python -m indexer migrate` (the chart's pre-install/pre-upgrade hook Job) creates instead."""

from __future__ import annotations

import httpx
import pytest
from elasticsearch import AsyncElasticsearch

from blog_testkit import Stack
from indexer.__main__ import _migrate
from indexer.app import create_app
from indexer.settings import IndexerSettings


def test_migrate_on_start_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INDEXER_ES_URL", "http://127.0.0.1:9200")
    assert IndexerSettings().migrate_on_start is True
    monkeypatch.setenv("INDEXER_MIGRATE_ON_START", "false")
    assert IndexerSettings().migrate_on_start is False


async def alias_exists(es_url: str, alias: str) -> bool:
    es = AsyncElasticsearch(es_url)
    try:
        return bool(await es.indices.exists_alias(name=alias))
    finally:
        await es.close()


@pytest.mark.integration
async def test_start_without_migrations_then_with_the_migrate_command(
    stack: Stack, topic: str, es_prefix: str
) -> None:
    settings = IndexerSettings(
        es_url=stack.es_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        topic=topic,
        group_id=f"indexer-{topic}",
        index_alias=f"{es_prefix}blogs",
        consumer_enabled=False,
        migrate_on_start=False,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert not await alias_exists(stack.es_url, settings.index_alias)

    await _migrate(settings)
    assert await alias_exists(stack.es_url, settings.index_alias)
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://i") as client,
    ):
        response = await client.get("/search", params={"q": "anything"})
        assert response.status_code == 200, response.text
        assert response.json()["total"] == 0

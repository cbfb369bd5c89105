"""Fixtures shared by the indexer's integration tests (live consumer, verify, rebuild)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from elasticsearch import AsyncElasticsearch

from blog_testkit import Stack
from blog_testkit.plugin import create_dead_letter_topics


@pytest_asyncio.fixture
async def topic(topic: str, stack: Stack) -> str:
    """The plugin's fresh topic, plus the dead-letter and retry topics of the module's consumer
    group `indexer-<topic>`: consumers wait for them before they consume."""
    await create_dead_letter_topics(stack.kafka_bootstrap, topic, [f"indexer-{topic}"])
    return topic


@pytest_asyncio.fixture
async def es(stack: Stack) -> AsyncIterator[AsyncElasticsearch]:
    client = AsyncElasticsearch(stack.es_url)
    try:
        yield client
    finally:
        await client.close()

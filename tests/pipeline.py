"""The whole system as processes (the `pipeline` fixture, registered in tests/conftest.py):
publisher, counter and indexer started with `python -m`,
isolated on a fresh database, topic, consumer groups and index alias."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest_asyncio

from blog_testkit import ServiceProcess, Stack
from blog_testkit.plugin import create_dead_letter_topics


@dataclass
class Author:
    author_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Pipeline:
    publisher: ServiceProcess
    counter: ServiceProcess
    indexer: ServiceProcess
    publisher_env: dict[str, str]
    http: httpx.AsyncClient
    extra: list[ServiceProcess] = field(default_factory=list)

    async def create_author(self, name: str) -> Author:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "publisher",
            "create-author",
            "--name",
            name,
            env={**os.environ, **self.publisher_env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        created = json.loads(out)
        return Author(author_id=created["author_id"], token=created["token"])

    async def total_blogs(self, author: Author) -> int:
        response = await self.http.get(f"{self.counter.url}/authors/{author.author_id}/stats")
        response.raise_for_status()
        total: int = response.json()["total_blogs"]
        return total

    async def indexed(self, author: Author) -> dict[str, int]:
        """blog id -> indexed version, for the author's searchable blogs."""
        response = await self.http.get(
            f"{self.indexer.url}/search", params={"author": author.author_id, "size": 100}
        )
        response.raise_for_status()
        return {hit["blog_id"]: hit["version"] for hit in response.json()["hits"]}


@pytest_asyncio.fixture
async def pipeline(
    stack: Stack,
    service_database_urls: dict[str, str],
    topic: str,
    es_prefix: str,
    service_processes: Callable[..., ServiceProcess],
) -> AsyncIterator[Pipeline]:
    suffix = uuid.uuid4().hex[:8]
    counter_group, indexer_group = f"counter-{suffix}", f"indexer-{suffix}"
    # Each group's own dead-letter topic, as the teams' topics files declare them.
    await create_dead_letter_topics(stack.kafka_bootstrap, topic, [counter_group, indexer_group])
    publisher_env = {
        # Each service as its own PostgreSQL role, owner of its schema only.
        "PUBLISHER_DATABASE_URL": service_database_urls["publisher"],
        "PUBLISHER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "PUBLISHER_TOPIC": topic,
        "PUBLISHER_STATUS_GROUPS": json.dumps([counter_group, indexer_group]),
    }
    publisher = service_processes("publisher", "publisher", publisher_env)
    counter = service_processes(
        "counter",
        "counter",
        {
            "COUNTER_DATABASE_URL": service_database_urls["counter"],
            "COUNTER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
            "COUNTER_TOPIC": topic,
            "COUNTER_GROUP_ID": counter_group,
        },
    )
    indexer = service_processes(
        "indexer",
        "indexer",
        {
            "INDEXER_ES_URL": stack.es_url,
            "INDEXER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
            "INDEXER_TOPIC": topic,
            "INDEXER_GROUP_ID": indexer_group,
            "INDEXER_INDEX_ALIAS": f"{es_prefix}blogs",
        },
    )
    await asyncio.gather(publisher.start(), counter.start(), indexer.start())
    async with httpx.AsyncClient(timeout=10.0) as http:
        yield Pipeline(publisher, counter, indexer, publisher_env, http)
    for process in (publisher, counter, indexer):
        await process.terminate()

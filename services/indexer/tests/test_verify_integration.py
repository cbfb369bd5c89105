"""`python -m indexer verify` against the real stack: the documents the live indexer wrote behind
the alias (tombstones and external versions included) agree with the log; a document corrupted on
purpose, one deleted and one written at a wrong version are reported (exit 1, blog id, expected,
found)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
from collections.abc import AsyncIterator

import pytest
from elasticsearch import AsyncElasticsearch

from blog_events import Envelope
from blog_testkit import BlogHistory, Stack, produce, wait_for_zero_lag
from indexer.app import create_app
from indexer.settings import IndexerSettings
from indexer.verify import run_verify

pytestmark = pytest.mark.integration


def settings_for(stack: Stack, topic: str, es_prefix: str) -> IndexerSettings:
    return IndexerSettings(
        es_url=stack.es_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        topic=topic,
        group_id=f"indexer-{topic}",
        index_alias=f"{es_prefix}blogs",
    )


@contextlib.asynccontextmanager
async def running_indexer(settings: IndexerSettings) -> AsyncIterator[None]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield


def some_history(history: BlogHistory) -> list[Envelope]:
    events = [history.publish(title=f"blog {i}") for i in range(12)]
    blogs = [e.payload.blog_id for e in events]
    events += [history.update(b) for b in blogs[:6]]
    events += [history.delete(b) for b in blogs[4:8]]
    return events


async def verify(settings: IndexerSettings) -> tuple[int, str]:
    out = io.StringIO()
    code = await run_verify(settings, 5.0, out)
    return code, out.getvalue()


async def test_verify_agrees_then_reports_corrupted_documents(
    stack: Stack, topic: str, es_prefix: str, es: AsyncElasticsearch
) -> None:
    settings = settings_for(stack, topic, es_prefix)
    history = BlogHistory()
    await produce(stack.kafka_bootstrap, topic, some_history(history))
    async with running_indexer(settings):
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, 60)
        code, out = await verify(settings)
        assert code == 0, out
        assert out.startswith("indexer verify: OK: 12 blogs (8 live, 4 tombstones)"), out
        assert len(out.splitlines()) == 1

        live = sorted(history.live_blogs())
        retitled, removed, reversioned = live[0], live[1], live[2]
        alias = settings.index_alias
        await es.update(index=alias, id=str(retitled), doc={"title": "vandalised"})
        await es.delete(index=alias, id=str(removed))
        source = (await es.get(index=alias, id=str(reversioned))).body["_source"]
        await es.index(
            index=alias, id=str(reversioned), document=source, version=99, version_type="external"
        )
        code, out = await verify(settings)
    assert code == 1, out
    assert out.startswith("indexer verify: 3 document difference(s)"), out
    lines = out.splitlines()[1:]
    by_blog = {line.split(":")[0].split()[-1]: line for line in lines}
    assert set(by_blog) == {str(retitled), str(removed), str(reversioned)}
    assert "; found v" in by_blog[str(retitled)]
    assert "vandalised" in by_blog[str(retitled)]
    assert "found no document" in by_blog[str(removed)]
    assert f"expected v{history.last[reversioned].version} " in by_blog[str(reversioned)]
    assert "found v99 " in by_blog[str(reversioned)]


async def test_the_command_line(stack: Stack, topic: str, es_prefix: str) -> None:
    settings = settings_for(stack, topic, es_prefix)
    history = BlogHistory()
    await produce(stack.kafka_bootstrap, topic, [history.publish() for _ in range(3)])
    async with running_indexer(settings):
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, 60)
    env = {
        **os.environ,
        "INDEXER_ES_URL": stack.es_url,
        "INDEXER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "INDEXER_TOPIC": topic,
        "INDEXER_GROUP_ID": settings.group_id,
        "INDEXER_INDEX_ALIAS": settings.index_alias,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "indexer", "verify", "--settle-timeout", "5",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    [line] = out.decode().splitlines()
    assert line.startswith("indexer verify: OK: 3 blogs (3 live, 0 tombstones)"), line

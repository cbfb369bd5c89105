"""`python -m indexer rebuild` against the real stack, while the live indexer runs and blogs are
published, updated and deleted all along: a mapping change (a new analyzed sub-field) is rebuilt
into the next index and swapped in; `/search`, polled throughout, never fails and never misses a
blog it has shown before nor one older than the indexing delay; afterwards the index agrees with
the log (`verify`); `--rollback` and `--prune` work; a rebuild killed with -9 resumes into the
same index (lifting the write block a kill during the swap would leave)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from elasticsearch import AsyncElasticsearch

from blog_events import BlogDeleted, Envelope
from blog_testkit import BlogHistory, Stack, committed_offsets, produce, wait_for_zero_lag
from blog_testkit.waiting import wait_until
from indexer.app import create_app
from indexer.index import MAPPINGS
from indexer.rebuild import run_prune, run_rebuild, run_rollback
from indexer.settings import IndexerSettings
from indexer.verify import run_verify

pytestmark = pytest.mark.integration

BACKLOG = 3000
AUTHORS = 40
# A blog published longer ago than this must be found by search (the live indexer's own delay:
# a batch, then the index refresh interval of 1 s; generous for a loaded machine).
INDEXING_DELAY_S = 10.0

# The mapping change: tags get an analyzed sub-field, so "streams" finds "kafka-streams".
CHANGED_MAPPINGS: dict[str, Any] = copy.deepcopy(MAPPINGS)
CHANGED_MAPPINGS["properties"]["tags"] = {
    "type": "keyword",
    "fields": {"text": {"type": "text", "analyzer": "standard"}},
}


def settings_for(stack: Stack, topic: str, es_prefix: str) -> IndexerSettings:
    return IndexerSettings(
        es_url=stack.es_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        topic=topic,
        group_id=f"indexer-{topic}",
        index_alias=f"{es_prefix}blogs",
        max_batch=200,
    )


@contextlib.asynccontextmanager
async def running_indexer(settings: IndexerSettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://indexer", timeout=30
        ) as client,
    ):
        yield client


@dataclass
class Blogs:
    """The load's history, the authors, and when each blog was published (monotonic time)."""

    history: BlogHistory = field(default_factory=BlogHistory)
    authors: list[uuid.UUID] = field(default_factory=lambda: [uuid.uuid4() for _ in range(AUTHORS)])
    published_at: dict[uuid.UUID, float] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(13))

    def next_event(self) -> Envelope:
        live = sorted(self.history.live_blogs())
        roll = self.rng.random()
        if not live or roll < 0.4:
            envelope = self.history.publish(
                self.rng.choice(self.authors), tags=("kafka-streams",) if roll < 0.1 else ()
            )
            self.published_at[envelope.payload.blog_id] = time.monotonic()
            return envelope
        if roll < 0.8:
            return self.history.update(self.rng.choice(live))
        return self.history.delete(self.rng.choice(live))

    def is_live(self, blog_id: uuid.UUID) -> bool:
        return not isinstance(self.history.last.get(blog_id), BlogDeleted)


@contextlib.asynccontextmanager
async def load(stack: Stack, topic: str, blogs: Blogs) -> AsyncIterator[None]:
    """POST/PUT/DELETE-like events produced without pause until the block ends."""
    stopping = asyncio.Event()

    async def run() -> None:
        while not stopping.is_set():
            await produce(stack.kafka_bootstrap, topic, [blogs.next_event() for _ in range(20)])
            await asyncio.sleep(0.02)  # pacing of the load, not synchronisation

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        stopping.set()
        await asyncio.wait_for(task, 60)


@dataclass
class SearchWatch:
    polls: int = 0
    failures: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    longest_s: float = 0.0
    seen: set[uuid.UUID] = field(default_factory=set)


@contextlib.asynccontextmanager
async def watching_search(client: httpx.AsyncClient, blogs: Blogs) -> AsyncIterator[SearchWatch]:
    """Poll /search, one author at a time, until the block ends."""
    watch = SearchWatch()
    stopping = asyncio.Event()

    async def run() -> None:
        turn = 0
        while not stopping.is_set():
            author = blogs.authors[turn % len(blogs.authors)]
            turn += 1
            must_find = {
                b
                for b, at in blogs.published_at.items()
                if blogs.history.last[b].author_id == author
                and (b in watch.seen or time.monotonic() - at > INDEXING_DELAY_S)
            }
            started = time.monotonic()
            try:
                response = await client.get("/search", params={"author": str(author), "size": 100})
            except httpx.HTTPError as exc:
                watch.failures.append(repr(exc))
                continue
            watch.longest_s = max(watch.longest_s, time.monotonic() - started)
            watch.polls += 1
            if response.status_code != 200:
                watch.failures.append(f"{response.status_code} {response.text[:200]}")
                continue
            found = {uuid.UUID(hit["blog_id"]) for hit in response.json()["hits"]}
            watch.seen |= found
            # Judged after the answer: a blog deleted meanwhile may rightly be gone.
            missing = {b for b in must_find - found if blogs.is_live(b)}
            watch.misses += [f"poll {watch.polls}: blog {b} missing" for b in sorted(missing)]

    task = asyncio.create_task(run())
    try:
        yield watch
    finally:
        stopping.set()
        await asyncio.wait_for(task, 60)


async def verify(settings: IndexerSettings) -> tuple[int, str]:
    out = io.StringIO()
    code = await run_verify(settings, 30.0, out)
    return code, out.getvalue()


async def alias_target(es: AsyncElasticsearch, alias: str) -> list[str]:
    return sorted((await es.indices.get_alias(name=alias)).body)


async def test_a_mapping_change_rebuilt_under_load_with_search_answering_throughout(
    stack: Stack, topic: str, es_prefix: str, es: AsyncElasticsearch
) -> None:
    settings = settings_for(stack, topic, es_prefix)
    alias = settings.index_alias
    blogs = Blogs()
    await produce(stack.kafka_bootstrap, topic, [blogs.next_event() for _ in range(BACKLOG)])
    out = io.StringIO()
    async with running_indexer(settings) as client:
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, 120)
        async with load(stack, topic, blogs), watching_search(client, blogs) as watch:
            outcome = await asyncio.wait_for(
                run_rebuild(settings, out, swap_lag=200, batch=500, mappings=CHANGED_MAPPINGS),
                300,
            )
            # Keep loading and searching a little after the swap as well.
            polls_at_swap = watch.polls
            await wait_until(
                lambda: asyncio.sleep(0, watch.polls > polls_at_swap + 20),
                timeout=60,
                what="searches after the swap",
            )
        print(
            f"\nrebuild of {outcome.applied_records} records in {outcome.seconds:.1f}s; "
            f"{watch.polls} searches, longest {watch.longest_s * 1000:.0f} ms\n{out.getvalue()}"
        )
        assert watch.failures == []
        assert watch.misses == []
        assert watch.polls > 20
        assert outcome.index == f"{alias}-v2"
        # The finished rebuild's group is deleted (lagmon would watch it fall behind forever).
        rebuild_group = f"{settings.group_id}-rebuild-{alias}-v2"
        assert await committed_offsets(stack.kafka_bootstrap, rebuild_group) == {}
        assert await alias_target(es, alias) == [f"{alias}-v2"]
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, 120)
        code, report = await verify(settings)
        assert code == 0, report

        # The new mapping serves the whole history: the analyzed sub-field matches old blogs.
        tagged = {
            str(b)
            for b in blogs.history.live_blogs()
            if "kafka-streams" in getattr(blogs.history.last[b], "tags", ())
        }
        await es.indices.refresh(index=alias)
        found = await es.search(
            index=alias,
            query={"bool": {"must": {"match": {"tags.text": "streams"}},
                            "must_not": {"term": {"deleted": True}}}},
            size=1000,
        )  # fmt: skip
        assert {hit["_id"] for hit in found.body["hits"]["hits"]} == tagged
        assert tagged

        # Rollback: the previous index is brought up to date and put back.
        async with load(stack, topic, blogs), watching_search(client, blogs) as watch:
            assert await asyncio.wait_for(run_rollback(settings, out, swap_lag=200), 300) == 0
        assert watch.failures == []
        assert watch.misses == []
        assert await alias_target(es, alias) == [f"{alias}-v1"]
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, 120)
        code, report = await verify(settings)
        assert code == 0, report

    assert await run_prune(settings, out) == 0
    assert sorted((await es.indices.get(index=f"{alias}-v*")).body) == [f"{alias}-v1"]


async def test_a_rebuild_killed_with_sigkill_resumes_into_the_same_index(
    stack: Stack, topic: str, es_prefix: str, es: AsyncElasticsearch
) -> None:
    settings = settings_for(stack, topic, es_prefix)
    alias = settings.index_alias
    blogs = Blogs()
    await produce(stack.kafka_bootstrap, topic, [blogs.next_event() for _ in range(BACKLOG)])
    env = {
        **os.environ,
        "INDEXER_ES_URL": stack.es_url,
        "INDEXER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "INDEXER_TOPIC": topic,
        "INDEXER_GROUP_ID": settings.group_id,
        "INDEXER_INDEX_ALIAS": alias,
    }
    rebuild_group = f"{settings.group_id}-rebuild-{alias}-v2"

    async def start(*args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "indexer", "rebuild", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip

    async with running_indexer(settings):
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, 120)
        # Small bulks so that it is killed half-way.
        first = await start("--batch", "20")
        try:

            async def some_committed() -> bool:
                done = sum((await committed_offsets(stack.kafka_bootstrap, rebuild_group)).values())
                return done >= 200

            await wait_until(some_committed, timeout=120, what="the rebuild committed some")
        finally:
            with contextlib.suppress(ProcessLookupError):
                first.send_signal(signal.SIGKILL)
            await asyncio.wait_for(first.wait(), 30)
        assert first.returncode == -signal.SIGKILL
        assert await alias_target(es, alias) == [f"{alias}-v1"]
        # As if it had been killed during its swap: the live index write-blocked.
        await es.indices.put_settings(index=f"{alias}-v1", settings={"index.blocks.write": True})

        second = await start()
        try:
            output, _ = await asyncio.wait_for(second.communicate(), 300)
        finally:
            if second.returncode is None:
                second.kill()
                await second.wait()
        text = output.decode()
        assert second.returncode == 0, text
        assert f"resuming the rebuild of {alias}-v2" in text
        assert await alias_target(es, alias) == [f"{alias}-v2"]
        assert sorted((await es.indices.get(index=f"{alias}-v*")).body) == [
            f"{alias}-v1",
            f"{alias}-v2",
        ]
        # The live indexer writes again (the block was lifted) into the new index.
        await produce(stack.kafka_bootstrap, topic, [blogs.next_event() for _ in range(50)])
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, 120)
        code, report = await verify(settings)
        assert code == 0, report

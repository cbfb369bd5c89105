"""`python -m counter rebuild` against the real stack, while the live counter runs and blogs are
published, updated and deleted all along: the swapped-in tables agree with the log afterwards
(`verify`), as they do after `--rollback`; `--prune` drops the previous tables."""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from blog_events import Envelope
from blog_testkit import BlogHistory, Stack, committed_offsets, produce, wait_for_zero_lag
from blog_testkit.plugin import create_dead_letter_topics
from counter.app import create_app
from counter.rebuild import run_prune, run_rebuild, run_rollback
from counter.settings import Settings
from counter.verify import run_verify

pytestmark = pytest.mark.integration

BACKLOG = 3000


@pytest_asyncio.fixture
async def topic(topic: str, stack: Stack) -> str:
    await create_dead_letter_topics(stack.kafka_bootstrap, topic, [f"counter-{topic}"])
    return topic


def settings_for(stack: Stack, database_url: str, topic: str) -> Settings:
    return Settings(
        database_url=database_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        topic=topic,
        group_id=f"counter-{topic}",
        max_batch=200,
    )


@contextlib.asynccontextmanager
async def running_counter(settings: Settings) -> AsyncIterator[None]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield


def next_events(history: BlogHistory, rng: random.Random, authors: list[uuid.UUID]) -> Envelope:
    """What a client would do next: mostly publish and update, sometimes delete."""
    live = sorted(history.live_blogs())
    roll = rng.random()
    if not live or roll < 0.4:
        return history.publish(rng.choice(authors))
    if roll < 0.8:
        return history.update(rng.choice(live))
    return history.delete(rng.choice(live))


@contextlib.asynccontextmanager
async def load(stack: Stack, topic: str, history: BlogHistory) -> AsyncIterator[list[int]]:
    """POST/PUT/DELETE-like events produced without pause until the block ends; yields a
    one-element list counting them."""
    rng = random.Random(13)
    authors = [uuid.uuid4() for _ in range(25)]
    produced = [0]
    stopping = asyncio.Event()

    async def run() -> None:
        while not stopping.is_set():
            batch = [next_events(history, rng, authors) for _ in range(20)]
            await produce(stack.kafka_bootstrap, topic, batch)
            produced[0] += len(batch)
            await asyncio.sleep(0.02)  # pacing of the load, not synchronisation

    task = asyncio.create_task(run())
    try:
        yield produced
    finally:
        stopping.set()
        await asyncio.wait_for(task, 60)


async def verify(settings: Settings) -> tuple[int, str]:
    out = io.StringIO()
    code = await run_verify(settings, 30.0, out)
    return code, out.getvalue()


async def tables(database_url: str) -> set[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'counter'"
        )
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}


async def test_rebuild_under_load_then_rollback_and_prune(
    stack: Stack, database_url: str, topic: str
) -> None:
    settings = settings_for(stack, database_url, topic)
    history = BlogHistory()
    rng = random.Random(7)
    authors = [uuid.uuid4() for _ in range(25)]
    await produce(
        stack.kafka_bootstrap, topic, [next_events(history, rng, authors) for _ in range(BACKLOG)]
    )
    async with running_counter(settings):
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, 120)
        async with load(stack, topic, history) as produced:
            out = io.StringIO()
            outcome = await asyncio.wait_for(run_rebuild(settings, out, swap_lag=200), 300)
            during = produced[0]
        assert during > 0, "the load ran during the rebuild"
        assert outcome.applied_records >= BACKLOG
        assert "swapped at offsets" in out.getvalue(), out.getvalue()
        # The finished rebuild's group is deleted (lagmon would watch it fall behind forever).
        assert await committed_offsets(stack.kafka_bootstrap, f"{settings.group_id}-rebuild") == {}
        assert {"blog_state", "author_stats", "blog_state_previous", "author_stats_previous"} <= (
            await tables(database_url)
        )
        assert not {"blog_state_rebuild", "author_stats_rebuild"} & await tables(database_url)
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, 120)
        code, report = await verify(settings)
        assert code == 0, report
        assert ", 0 still in flight" in report, report

        # Rollback, under load too: the previous tables are brought up to date, then swapped.
        async with load(stack, topic, history):
            assert await asyncio.wait_for(run_rollback(settings, out, swap_lag=200), 300) == 0
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, 120)
        code, report = await verify(settings)
        assert code == 0, report

    assert await run_prune(settings, out) == 0
    left = await tables(database_url)
    assert {"blog_state", "author_stats"} <= left
    assert not {"blog_state_previous", "author_stats_previous"} & left
    assert await run_rollback(settings, out) == 2  # nothing to go back to

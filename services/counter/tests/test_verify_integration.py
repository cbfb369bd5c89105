"""`python -m counter verify` against the real stack: the tables the live counter built agree
with the log; a row and an author total corrupted on purpose are reported (exit 1, blog id,
expected, found); records the live group has not committed yet are in flight, not differences."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from blog_events import Envelope
from blog_testkit import BlogHistory, Stack, produce, wait_for_zero_lag
from blog_testkit.plugin import create_dead_letter_topics
from counter.app import create_app
from counter.settings import Settings
from counter.verify import run_verify

pytestmark = pytest.mark.integration


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
    )


@contextlib.asynccontextmanager
async def running_counter(settings: Settings) -> AsyncIterator[None]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield


def history_with_every_kind_of_event(history: BlogHistory) -> list[Envelope]:
    authors = [uuid.uuid4() for _ in range(4)]
    events = [history.publish(authors[i % 4]) for i in range(20)]
    blogs = [e.payload.blog_id for e in events]
    events += [history.update(b) for b in blogs[:10]]
    events += [history.delete(b) for b in blogs[5:12]]
    events += [history.update(b) for b in blogs[:3]]
    return events


async def verify(settings: Settings, settle_timeout_s: float = 5.0) -> tuple[int, str]:
    out = io.StringIO()
    code = await run_verify(settings, settle_timeout_s, out)
    return code, out.getvalue()


async def test_verify_agrees_then_reports_a_corrupted_row_and_total(
    stack: Stack, database_url: str, topic: str
) -> None:
    settings = settings_for(stack, database_url, topic)
    history = BlogHistory()
    events = history_with_every_kind_of_event(history)
    await produce(stack.kafka_bootstrap, topic, events)
    async with running_counter(settings):
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, 60)

        code, out = await verify(settings)
        assert code == 0, out
        assert out.startswith("counter verify: OK: 20 blogs (13 live, 4 author(s)")
        assert len(out.splitlines()) == 1

        live_blog = sorted(history.live_blogs())[0]
        other_author = history.last[sorted(history.live_blogs())[-1]].author_id
        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute(
                "UPDATE counter.blog_state SET live = false WHERE blog_id = $1", live_blog
            )
            await connection.execute(
                "UPDATE counter.author_stats SET total_blogs = total_blogs + 7 "
                "WHERE author_id = $1",
                other_author,
            )
        finally:
            await connection.close()

        code, out = await verify(settings)
    assert code == 1, out
    version = history.last[live_blog].version
    author = history.last[live_blog].author_id
    assert "1 blog and " in out.splitlines()[0]
    assert (
        f"  blog {live_blog}: expected v{version} live, author {author}; "
        f"found v{version} deleted, author {author}"
    ) in out
    expected_total = len(history.live_blogs(other_author))
    assert (
        f"  author {other_author}: expected total_blogs {expected_total}; "
        f"found total_blogs {expected_total + 7}"
    ) in out


async def test_records_the_live_group_has_not_committed_are_in_flight_not_differences(
    stack: Stack, database_url: str, topic: str
) -> None:
    settings = settings_for(stack, database_url, topic)
    history = BlogHistory()
    await produce(stack.kafka_bootstrap, topic, [history.publish() for _ in range(5)])
    async with running_counter(settings):
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, 60)
    # The live counter is stopped: these are in the log only.
    later = history.update(next(iter(history.live_blogs())))
    await produce(stack.kafka_bootstrap, topic, [later, history.publish()])
    code, out = await verify(settings, settle_timeout_s=1.0)
    assert code == 0, out
    assert "2 still in flight (not compared)" in out


async def test_the_command_line(stack: Stack, database_url: str, topic: str) -> None:
    settings = settings_for(stack, database_url, topic)
    history = BlogHistory()
    await produce(stack.kafka_bootstrap, topic, [history.publish() for _ in range(3)])
    async with running_counter(settings):
        await wait_for_zero_lag(stack.kafka_bootstrap, settings.group_id, topic, 60)
    env = {
        **os.environ,
        "COUNTER_DATABASE_URL": database_url,
        "COUNTER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "COUNTER_TOPIC": topic,
        "COUNTER_GROUP_ID": settings.group_id,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "counter", "verify", "--settle-timeout", "5",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    [line] = out.decode().splitlines()
    assert line.startswith("counter verify: OK: 3 blogs (3 live, 3 author(s)"), line

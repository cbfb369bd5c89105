"""/healthz means alive (the consumer task runs: waiting for topics or retrying an outage
included), /readyz means ready (consuming, dependencies reachable). A consumer task that died
(here: a handler bug cancelling it) makes /healthz 503, so the orchestrator restarts it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from blog_testkit import BlogHistory, Stack, produce, wait_until
from blog_testkit.faults import HandlerSwitch
from blog_testkit.plugin import create_dead_letter_topics
from counter.app import create_app
from counter.settings import Settings

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0


@contextlib.asynccontextmanager
async def running(settings: Settings, switch: HandlerSwitch) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, wrap_handler=switch.wrap)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as client,
    ):
        yield client


async def probes(client: httpx.AsyncClient) -> tuple[int, str, int, str]:
    """(/healthz status, its consumer, /readyz status, its consumer check)."""
    health, ready = await client.get("/healthz"), await client.get("/readyz")
    return (
        health.status_code,
        health.json().get("consumer", ""),
        ready.status_code,
        ready.json()["checks"]["consumer"],
    )


async def test_healthz_fails_only_once_the_consumer_task_died(
    stack: Stack, database_url: str, topic: str
) -> None:
    settings = Settings(
        database_url=database_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        topic=topic,
        group_id=f"live-{topic}",
    )
    # A handler bug that cancels the task it runs in (e.g. a misused timeout): the loop ends.
    switch = HandlerSwitch(lambda: asyncio.CancelledError("handler bug"))
    history = BlogHistory()
    async with running(settings, switch) as client:

        async def waiting_for_the_dlq() -> bool:
            _, _, ready, consumer = await probes(client)
            return ready == 503 and "does not exist" in consumer

        await wait_until(waiting_for_the_dlq, timeout=TIMEOUT_S, what="waiting for its DLQ")
        assert (await probes(client))[0] == 200  # waiting for topics: alive
        await create_dead_letter_topics(stack.kafka_bootstrap, topic, [settings.group_id])

        async def ready() -> bool:
            return (await probes(client))[2] == 200

        await wait_until(ready, timeout=TIMEOUT_S, what="ready")

        switch.mode = "outage"
        await produce(stack.kafka_bootstrap, topic, [history.publish(uuid.uuid4())])

        async def retrying() -> bool:
            _, _, ready, consumer = await probes(client)
            return ready == 503 and consumer == "handler failing (retrying)"

        await wait_until(retrying, timeout=TIMEOUT_S, what="not ready while retrying")
        assert (await probes(client))[0] == 200  # an outage: alive, not ready
        switch.mode = "pass"
        await wait_until(ready, timeout=TIMEOUT_S, what="ready after the outage")
        assert (await probes(client))[0] == 200

        switch.mode = "kill"
        await produce(stack.kafka_bootstrap, topic, [history.publish(uuid.uuid4())])

        async def dead() -> tuple[int, str, int, str]:
            found = await probes(client)
            return found if found[0] == 503 else ()  # type: ignore[return-value]

        _, why, ready_status, ready_why = await wait_until(
            dead, timeout=TIMEOUT_S, what="/healthz 503"
        )
        assert why == "consumer task cancelled"
        assert (ready_status, ready_why) == (503, "consumer stopped")

"""/healthz means alive (the consumer task runs: waiting for topics or retrying an outage
included), /readyz means ready (consuming, Elasticsearch reachable). A consumer task that died
(here: an error no retry catches escaping the loop) makes /healthz 503, so the orchestrator
restarts it."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from blog_testkit import BlogHistory, Stack, produce, wait_until
from blog_testkit.faults import HandlerSwitch, LoopKilled
from blog_testkit.plugin import create_dead_letter_topics
from indexer.app import create_app
from indexer.settings import IndexerSettings

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0


@contextlib.asynccontextmanager
async def running(
    settings: IndexerSettings, switch: HandlerSwitch
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, wrap_handler=switch.wrap)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://i") as client,
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
    stack: Stack, topic: str, es_prefix: str
) -> None:
    settings = IndexerSettings(
        es_url=stack.es_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        topic=topic,
        group_id=f"live-{topic}",
        index_alias=f"{es_prefix}blogs",
    )
    switch = HandlerSwitch(lambda: LoopKilled("a bug escaping the loop"))
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
        assert why == "consumer task died: LoopKilled: a bug escaping the loop"
        assert (ready_status, ready_why) == (503, "consumer stopped")

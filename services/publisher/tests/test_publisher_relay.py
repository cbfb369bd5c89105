"""The outbox relay and the status endpoint against real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from blog_events import Envelope, decode_event
from blog_testkit import ServiceProcess, Stack, free_port, wait_until
from blog_testkit.plugin import create_topic

from .conftest import PublisherFactory, draft, new_author

pytestmark = pytest.mark.integration


class TopicReader:
    """Reads a topic from the beginning, without a group, accumulating what it saw."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.records: list[ConsumerRecord] = []

    async def read_until(self, count: int, deadline_s: float = 30.0) -> list[ConsumerRecord]:
        async def enough() -> bool:
            batches = await self.consumer.getmany(timeout_ms=200)
            for records in batches.values():
                self.records.extend(records)
            return len(self.records) >= count

        await wait_until(enough, timeout=deadline_s, what=f"{count} records on the topic")
        return self.records


@pytest_asyncio.fixture
async def reader(stack: Stack, topic: str) -> AsyncIterator[TopicReader]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        yield TopicReader(consumer)
    finally:
        await consumer.stop()


async def unsent_rows(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM publisher.outbox WHERE sent_at IS NULL")
    return count


async def test_relay_sends_in_order_and_records_positions(
    publisher_factory: PublisherFactory,
    database_url: str,
    db: asyncpg.Connection,
    reader: TopicReader,
) -> None:
    async with publisher_factory(relay_enabled=True) as running:
        author = await new_author(database_url)
        client = running.client
        first = (await client.post("/blogs", json=draft("a"), headers=author.headers)).json()["id"]
        second = (await client.post("/blogs", json=draft("b"), headers=author.headers)).json()["id"]
        for i in range(3):
            response = await client.put(
                f"/blogs/{first}", json=draft(f"a{i}"), headers=author.headers
            )
            assert response.status_code == 202
        assert (await client.delete(f"/blogs/{second}", headers=author.headers)).status_code == 202

        async def all_sent() -> bool:
            return await unsent_rows(db) == 0

        await wait_until(all_sent, timeout=30, what="every outbox row relayed")
        records = await reader.read_until(6)
        metrics = (await client.get("/metrics")).text

    assert len(records) == 6
    rows = await db.fetch("SELECT * FROM publisher.outbox ORDER BY id")
    by_event = {decode_event(r.value).event_id: r for r in records}
    for row in rows:
        record = by_event[row["event_id"]]  # each outbox event reached Kafka ...
        # ... byte-identical, keyed by blog id, at the recorded position.
        assert record.value == bytes(row["payload"])
        assert record.key == str(row["blog_id"]).encode()
        assert (record.partition, record.offset) == (row["kafka_partition"], row["kafka_offset"])
    # Per blog: one partition, versions in order.
    for blog_id, expected in ((first, [1, 2, 3, 4]), (second, [1, 2])):
        envelopes: list[Envelope] = [
            decode_event(r.value)
            for r in sorted(records, key=lambda r: r.offset)
            if r.key == blog_id.encode()
        ]
        assert [e.payload.version for e in envelopes] == expected
        assert len({r.partition for r in records if r.key == blog_id.encode()}) == 1
    assert "publisher_relay_sent_total 6.0" in metrics
    assert "publisher_outbox_unsent_rows 0.0" in metrics


async def test_post_succeeds_while_kafka_is_unreachable(
    publisher_factory: PublisherFactory, database_url: str, db: asyncpg.Connection
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    async with publisher_factory(relay_enabled=True, kafka_bootstrap_servers=closed) as running:
        author = await new_author(database_url)
        response = await running.client.post("/blogs", json=draft(), headers=author.headers)
        assert response.status_code == 202
        relay = running.runtime.relay
        assert relay is not None

        async def relay_failed_to_reach_kafka() -> bool:
            return relay.is_leader and relay.kafka_ok is False

        await wait_until(relay_failed_to_reach_kafka, timeout=30, what="relay saw Kafka down")
        # A second write after the relay's failure: still accepted.
        response = await running.client.post("/blogs", json=draft(), headers=author.headers)
        assert response.status_code == 202
        ready = await running.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["kafka"] == "unreachable"
        status = (await running.client.get(response.json()["status_url"])).json()
        assert status["event"] is None
    assert await unsent_rows(db) == 2


async def test_only_one_relay_leads_and_each_event_is_sent_once(
    publisher_factory: PublisherFactory,
    database_url: str,
    db: asyncpg.Connection,
    reader: TopicReader,
) -> None:
    async with (
        publisher_factory(relay_enabled=True) as one,
        publisher_factory(relay_enabled=True) as two,
    ):
        relays = [one.runtime.relay, two.runtime.relay]
        assert relays[0] is not None
        assert relays[1] is not None

        async def one_leader() -> bool:
            return sum(r.is_leader for r in relays if r) == 1

        await wait_until(one_leader, timeout=15, what="one relay leads")
        author = await new_author(database_url)
        writes = [
            one.client.post("/blogs", json=draft(f"one{i}"), headers=author.headers)
            for i in range(10)
        ] + [
            two.client.post("/blogs", json=draft(f"two{i}"), headers=author.headers)
            for i in range(10)
        ]
        assert {r.status_code for r in await asyncio.gather(*writes)} == {202}

        async def all_sent() -> bool:
            return await unsent_rows(db) == 0

        await wait_until(all_sent, timeout=30, what="every outbox row relayed")
        assert sum(r.is_leader for r in relays if r) == 1
        standby_metrics = (
            await (two if relays[0] and relays[0].is_leader else one).client.get("/metrics")
        ).text
        assert "publisher_relay_sent_total 0.0" in standby_metrics
    records = await reader.read_until(20)
    event_ids = [decode_event(r.value).event_id for r in records]
    assert len(event_ids) == 20
    assert len(set(event_ids)) == 20
    assert set(event_ids) == {
        r["event_id"] for r in await db.fetch("SELECT * FROM publisher.outbox")
    }


async def test_standby_takes_over_when_leader_stops(
    publisher_factory: PublisherFactory, database_url: str, db: asyncpg.Connection
) -> None:
    async with contextlib.AsyncExitStack() as second_scope:
        async with publisher_factory(relay_enabled=True) as first:
            relay_one = first.runtime.relay
            assert relay_one is not None

            async def first_leads() -> bool:
                return relay_one.is_leader

            await wait_until(first_leads, timeout=15, what="first relay leads")
            second = await second_scope.enter_async_context(publisher_factory(relay_enabled=True))
            relay_two = second.runtime.relay
            assert relay_two is not None
            assert not relay_two.is_leader
        # The first app has shut down: its lock session is closed.

        async def second_leads() -> bool:
            return relay_two.is_leader

        await wait_until(second_leads, timeout=15, what="standby relay takes over")
        author = await new_author(database_url)
        response = await second.client.post("/blogs", json=draft(), headers=author.headers)
        assert response.status_code == 202

        async def all_sent() -> bool:
            return await unsent_rows(db) == 0

        await wait_until(all_sent, timeout=30, what="row relayed by the new leader")


async def test_status_reports_group_progress(
    publisher_factory: PublisherFactory, database_url: str, stack: Stack, topic: str
) -> None:
    group = f"{topic}-fake-group"
    async with publisher_factory(relay_enabled=True, status_groups=[group]) as running:
        author = await new_author(database_url)
        accepted = (
            await running.client.post("/blogs", json=draft(), headers=author.headers)
        ).json()

        async def relayed() -> dict[str, Any]:
            body: dict[str, Any] = (await running.client.get(accepted["status_url"])).json()
            return body if body["event"] is not None else {}  # {} is falsy: keep waiting

        status: dict[str, Any] = await wait_until(relayed, timeout=30, what="event relayed")
        assert status["blog_id"] == accepted["id"]
        assert status["version"] == 1
        assert status["groups"] == {
            group: {"processed": False, "committed_offset": None, "error": None}
        }
        event = status["event"]
        assert isinstance(event, dict)
        partition, offset = event["partition"], event["offset"]

        consumer = AIOKafkaConsumer(
            bootstrap_servers=stack.kafka_bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            # Committing the event's own offset means "next to read is the event": not yet done.
            await consumer.commit({tp: OffsetAndMetadata(offset, "")})
            body = (await running.client.get(f"/blogs/{accepted['id']}/status")).json()
            assert body["groups"][group] == {
                "processed": False,
                "committed_offset": offset,
                "error": None,
            }
            await consumer.commit({tp: OffsetAndMetadata(offset + 1, "")})
        finally:
            await consumer.stop()
        body = (await running.client.get(f"/blogs/{accepted['id']}/status")).json()
        assert body["groups"][group] == {
            "processed": True,
            "committed_offset": offset + 1,
            "error": None,
        }
        absent = await running.client.get(f"/blogs/{uuid.uuid4()}/status")
        assert absent.status_code == 404
        assert (await running.client.get(f"{accepted['status_url']}0")).status_code == 404


@pytest.mark.e2e
async def test_service_process_cli_and_graceful_shutdown(
    service_processes: Callable[..., ServiceProcess],
    stack: Stack,
    database_url: str,
    topic: str,
) -> None:
    port = free_port()
    env = {
        "PUBLISHER_PORT": str(port),
        "PUBLISHER_DATABASE_URL": database_url,
        "PUBLISHER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "PUBLISHER_TOPIC": topic,
        "PUBLISHER_TOKEN_CACHE_TTL_S": "1",
    }
    migrate = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "publisher",
        "migrate",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await migrate.communicate()
    assert migrate.returncode == 0
    assert json.loads(out)["applied"] == [
        "001_init.sql",
        "002_outbox_parking.sql",
        "003_idempotency_keys.sql",
        "004_outbox_trace_and_sender.sql",
    ]
    create = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "publisher",
        "create-author",
        "--name",
        "Grace",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await create.communicate()
    assert create.returncode == 0
    created = json.loads(out)
    uuid.UUID(created["author_id"])

    process = service_processes("publisher", "publisher", env, port)
    await process.start()
    headers = {"Authorization": f"Bearer {created['token']}"}
    async with httpx.AsyncClient(base_url=process.url, timeout=10) as client:
        response = await client.post("/blogs", json=draft(), headers=headers)
        assert response.status_code == 202
        status_url = response.json()["status_url"]

        async def relayed() -> bool:
            return (await client.get(status_url)).json()["event"] is not None

        await wait_until(relayed, timeout=30, what="event relayed by the process")
        assert (await client.get("/readyz")).json()["relay"] == "leader"

        revoke = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "publisher",
            "revoke-token",
            "--token",
            created["token"],
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
        )
        await revoke.communicate()
        assert revoke.returncode == 0

        async def refused() -> bool:
            response = await client.post("/blogs", json=draft(), headers=headers)
            return response.status_code == 401

        # Within the process's token cache TTL (1 s here, see `env`).
        await wait_until(refused, timeout=10, what="the revoked token refused", interval=0.1)
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete: -15 is a clean exit.
    assert await process.terminate() in (0, -signal.SIGTERM)
    log = process.log_text()
    assert "outbox relay: leadership released" in log
    assert "Application shutdown complete" in log


async def test_relay_waits_for_a_missing_topic_and_says_so(
    publisher_factory: PublisherFactory,
    database_url: str,
    db: asyncpg.Connection,
    stack: Stack,
    topic: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The relay never creates its topic: the publisher team applies its topics file.
    missing = f"{topic}.later"  # deleted with the fixture's topic
    caplog.set_level(logging.INFO, logger="publisher.relay")
    async with publisher_factory(relay_enabled=True, topic=missing) as running:
        author = await new_author(database_url)
        response = await running.client.post("/blogs", json=draft("a"), headers=author.headers)
        assert response.status_code == 202

        def waiting_lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if "relay: waiting:" in r.message]

        async def says_why() -> bool:
            return any(f"topic {missing} does not exist" in line for line in waiting_lines())

        await wait_until(says_why, timeout=30, what="the relay saying why it waits")
        assert await unsent_rows(db) == 1
        await create_topic(stack.kafka_bootstrap, missing)

        async def sent() -> bool:
            return await unsent_rows(db) == 0

        await wait_until(sent, timeout=60, what="the row sent once the topic exists")
    # Said once, not at every retry.
    assert len(waiting_lines()) == 1, waiting_lines()

"""A row the broker refuses for good is parked, with its reason, and the rows behind it go on;
an operator lists it and, once the cause is fixed, puts it back (`python -m publisher outbox`)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import uuid
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from blog_testkit import Stack, wait_until

from .conftest import PublisherFactory, draft, new_author

pytestmark = pytest.mark.integration

# The broker's default `message.max.bytes` is about 1 MB; the relay's producer allows 2 MB, so
# the broker itself refuses this record.
TOO_LARGE_BYTES = 1_500_000


async def outbox_state(db: asyncpg.Connection) -> tuple[int, int, int]:
    """(sent, waiting, parked) outbox rows."""
    row = await db.fetchrow(
        "SELECT count(*) FILTER (WHERE sent_at IS NOT NULL) AS sent,"
        " count(*) FILTER (WHERE sent_at IS NULL AND parked_at IS NULL) AS waiting,"
        " count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked FROM publisher.outbox"
    )
    assert row is not None
    return row["sent"], row["waiting"], row["parked"]


async def outbox_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "publisher",
        "outbox",
        *args,
        env={**os.environ, "PUBLISHER_DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def read_keys(stack: Stack, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    keys: list[bytes] = []
    try:

        async def enough() -> bool:
            batches = await consumer.getmany(timeout_ms=200)
            keys.extend(r.key for records in batches.values() for r in records if r.key)
            return len(keys) >= count

        await wait_until(enough, timeout=60, what=f"{count} records on {topic}")
    finally:
        await consumer.stop()
    return keys


async def test_a_row_larger_than_the_broker_accepts_is_parked_and_the_rest_goes_on(
    publisher_factory: PublisherFactory,
    database_url: str,
    db: asyncpg.Connection,
    stack: Stack,
    topic: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="publisher.relay")
    async with publisher_factory() as running:  # no relay yet: queue the rows first
        author = await new_author(database_url)
        before = [
            (await running.client.post("/blogs", json=draft(f"b{n}"), headers=author.headers))
            for n in range(2)
        ]
        large_blog = uuid.uuid4()
        await db.execute(
            "INSERT INTO publisher.outbox (event_id, blog_id, version, topic, key, payload)"
            " VALUES ($1, $2, 1, $3, $4, $5)",
            uuid.uuid4(),
            large_blog,
            topic,
            str(large_blog),
            b"x" * TOO_LARGE_BYTES,
        )
        after = [
            (await running.client.post("/blogs", json=draft(f"a{n}"), headers=author.headers))
            for n in range(2)
        ]
    good_keys = {r.json()["id"].encode() for r in (*before, *after)}
    parked_id: int = await db.fetchval(
        "SELECT id FROM publisher.outbox WHERE blog_id = $1", large_blog
    )

    async with publisher_factory(relay_enabled=True) as running:
        await wait_until(
            lambda: _is(outbox_state(db), (4, 0, 1)), timeout=60, what="4 sent, 1 parked"
        )
        assert set(await read_keys(stack, topic, 4)) == good_keys
        metrics = (await running.client.get("/metrics")).text
        assert "publisher_outbox_parked_rows 1.0" in metrics
        assert "publisher_outbox_unsent_rows 0.0" in metrics
        assert "publisher_relay_parked_total 1.0" in metrics
        parked_lines = [r.getMessage() for r in caplog.records if "parked row" in r.getMessage()]
        assert len(parked_lines) == 1
        assert f"parked row {parked_id} (blog {large_blog} version 1)" in parked_lines[0]

        code, out, _ = await outbox_cli(database_url, "list-parked")
        assert code == 0
        [listed] = [json.loads(line) for line in out.splitlines()]
        assert (listed["id"], listed["blog_id"], listed["payload_bytes"]) == (
            parked_id,
            str(large_blog),
            TOO_LARGE_BYTES,
        )
        print(f"\nlist-parked: {out.strip()}\nlog: {parked_lines[0]}")
        assert listed["reason"].startswith("MessageSizeTooLargeError")
        assert f"payload {TOO_LARGE_BYTES} bytes" in listed["reason"]

        # The fix: the topic accepts larger records. Then the row goes back to the queue.
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        await admin.start()
        try:
            await admin.alter_configs(
                [
                    ConfigResource(
                        ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": "3000000"}
                    )
                ]
            )
        finally:
            await admin.close()
        code, out, _ = await outbox_cli(database_url, "retry-parked", "--id", str(parked_id))
        assert (code, json.loads(out)) == (0, {"retried": [parked_id]})
        await wait_until(lambda: _is(outbox_state(db), (5, 0, 0)), timeout=60, what="all sent")
        assert set(await read_keys(stack, topic, 5)) == {*good_keys, str(large_blog).encode()}
        metrics = (await running.client.get("/metrics")).text
        assert "publisher_outbox_parked_rows 0.0" in metrics

    code, out, err = await outbox_cli(database_url, "retry-parked", "--id", str(parked_id))
    assert code == 1
    assert json.loads(out) == {"retried": []}
    assert "not parked" in err


async def test_retry_parked_all_and_list_when_empty(
    database_url: str, db: asyncpg.Connection
) -> None:
    from publisher.app import MIGRATIONS_DIR, SCHEMA
    from service_kit.migrations import apply_migrations

    await apply_migrations(database_url, SCHEMA, MIGRATIONS_DIR)
    code, out, err = await outbox_cli(database_url, "list-parked")
    assert (code, out, err.strip()) == (0, "", "0 parked row(s)")
    for n in range(2):
        await db.execute(
            "INSERT INTO publisher.outbox (event_id, blog_id, version, topic, key, payload,"
            " parked_at, parked_reason) VALUES ($1, $2, 1, 't', 'k', '\\x00', now(), $3)",
            uuid.uuid4(),
            uuid.uuid4(),
            f"reason {n}",
        )
    code, out, _ = await outbox_cli(database_url, "retry-parked", "--all")
    assert code == 0
    assert len(json.loads(out)["retried"]) == 2
    assert (
        await db.fetchval("SELECT count(*) FROM publisher.outbox WHERE parked_at IS NOT NULL") == 0
    )


async def _is(value: Any, expected: object) -> bool:
    return bool(await value == expected)

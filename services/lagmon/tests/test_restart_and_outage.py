"""`python -m lagmon` as a process: its verdicts come from Kafka's facts, so a restarted monitor
says STOP on its second sample for a group whose consumers are gone; and when Kafka stops, every
group is ERR with the reason while the last-successful-sample metric stops advancing."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from blog_testkit import ServiceProcess, Stack, commit_offsets, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
STACK_SCRIPT = REPO / "deploy" / "local" / "stack.sh"
SERVER_START_TIMEOUT_S = 240.0


async def produce(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for _ in range(count):
            await producer.send_and_wait(topic, b"{}", partition=0)
    finally:
        await producer.stop()


def lagmon_env(stack: Stack, topic: str, expected: list[str], poll_s: float) -> dict[str, str]:
    return {
        "LAGMON_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "LAGMON_TOPICS": json.dumps([topic]),
        "LAGMON_EXPECTED_GROUPS": ",".join(expected),
        "LAGMON_POLL_INTERVAL_S": str(poll_s),
        "LAGMON_REQUEST_TIMEOUT_S": "2",
        "LAGMON_TIMESTAMP_FETCH_TIMEOUT_S": "1",
    }


def start_lagmon(
    service_processes: Callable[..., ServiceProcess], env: dict[str, str]
) -> ServiceProcess:
    server = service_processes("lagmon", "lagmon", env)
    server.env["LAGMON_PORT"] = str(server.port)
    return server


async def groups(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    body = (await client.get("/api/lag")).json()
    return {g["group"]: g for g in body.get("groups", [])}


async def metric(client: httpx.AsyncClient, name: str, **labels: str) -> float | None:
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def test_gone_consumers_read_stop_on_the_second_sample_of_a_restarted_monitor(
    stack: Stack, topic: str, service_processes: Callable[..., ServiceProcess]
) -> None:
    bootstrap = stack.kafka_bootstrap
    group = f"{topic}-counter"
    await produce(bootstrap, topic, 3)
    server = start_lagmon(service_processes, lagmon_env(stack, topic, [group], poll_s=1.0))
    await server.start()
    member = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", heartbeat_interval_ms=500,
    )  # fmt: skip
    await member.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        try:
            await wait_until(
                lambda: _assigned(member), timeout=30, what=f"{group} gets its partitions"
            )
            await member.commit({TopicPartition(topic, 0): 3})

            async def consuming() -> bool:
                seen = (await groups(client)).get(group)
                return bool(seen and seen["state"] == "Stable" and seen["members"] == 1)

            await wait_until(consuming, timeout=30, what=f"{group} Stable with 1 member")
        finally:
            await member.stop()  # every consumer of the group is gone
        await produce(bootstrap, topic, 2)

        async def stopped() -> dict[str, Any] | None:
            seen = (await groups(client)).get(group)
            return seen if seen and seen["status"] == "STOP" else None

        before = await wait_until(stopped, timeout=30, what=f"{group} STOP")
        assert before is not None
        assert (before["state"], before["members"], before["lag"]) == ("Empty", 0, 2)

        # The monitor restarts: nothing of its memory survives.
        server.kill()
        await server.wait_exit(10)
        await server.start()

        async def two_samples() -> list[dict[str, Any]] | None:
            points = (await client.get("/api/history")).json()["groups"].get(group, [])
            return points if len(points) >= 2 else None

        points = await wait_until(two_samples, timeout=30, what="two samples after the restart")
        assert points is not None
        # Sample 1: no member with lag, within the grace; sample 2: STOP (Kafka's facts).
        assert [p["status"] for p in points[:2]] == ["WARN", "STOP"], points
        after = (await groups(client))[group]
        assert after["status"] == "STOP"
        assert after["reason"].startswith(f"{topic}[0]: no consumer (Empty) with lag 2 for ")
        assert await metric(client, "lagmon_group_status", group=group) == 4.0


async def _assigned(consumer: AIOKafkaConsumer) -> bool:
    await asyncio.sleep(0)
    return bool(consumer.assignment())


# --- Kafka stopped -------------------------------------------------------------------------------


async def stack_command(action: str, server: str) -> None:
    process = await asyncio.create_subprocess_exec(
        str(STACK_SCRIPT), action, server,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), SERVER_START_TIMEOUT_S)
    assert process.returncode == 0, f"stack.sh {action} {server} failed:\n{out.decode()}"


class KafkaOutage:
    """`begin()` stops the stack's Kafka, `end()` starts it again and waits until it is ready
    (a no-op unless stopped; the fixture calls it after the test too: other tests share it)."""

    def __init__(self) -> None:
        self.stopped = False

    async def begin(self) -> None:
        self.stopped = True
        await stack_command("stop", "kafka")

    async def end(self) -> None:
        if self.stopped:
            self.stopped = False
            await stack_command("start", "kafka")


@pytest.fixture
async def kafka_outage(stack: Stack) -> AsyncIterator[KafkaOutage]:
    port = stack.kafka_bootstrap.split(",")[0].rpartition(":")[2]
    if os.environ.get("KAFKA_PORT", "9092") != port:
        # stack.sh starts Kafka again on $KAFKA_PORT: it must be the port the tests use.
        pytest.fail(f"export the stack's ports (KAFKA_PORT={port} ...) before this test")
    outage = KafkaOutage()
    try:
        yield outage
    finally:
        await outage.end()


@pytest.mark.outage
async def test_kafka_stopped_makes_every_group_err_and_freezes_the_last_success(
    stack: Stack,
    topic: str,
    service_processes: Callable[..., ServiceProcess],
    kafka_outage: KafkaOutage,
) -> None:
    bootstrap = stack.kafka_bootstrap
    group, never = f"{topic}-counter", f"{topic}-indexer"
    await produce(bootstrap, topic, 2)
    await commit_offsets(bootstrap, group, {TopicPartition(topic, 0): 2})
    server = start_lagmon(service_processes, lagmon_env(stack, topic, [group, never], poll_s=0.5))
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:

        async def sampled() -> bool:
            seen = await groups(client)
            return seen.get(group, {}).get("status") == "OK" and never in seen

        await wait_until(sampled, timeout=30, what="both groups sampled")
        assert (await client.get("/readyz")).status_code == 200

        await kafka_outage.begin()

        async def all_err() -> dict[str, Any] | None:
            body: dict[str, Any] = (await client.get("/api/lag")).json()
            statuses = {g["group"]: g["status"] for g in body["groups"]}
            failed = body["error"] and statuses == {group: "ERR", never: "ERR"}
            return body if failed else None

        failed = await wait_until(all_err, timeout=60, interval=0.5, what="every group ERR")
        assert failed is not None
        for g in failed["groups"]:
            # Not frozen at the last status, and nothing stale claimed as current.
            assert g["reason"] == f"sample failed: {failed['error']}"
            assert (g["lag"], g["members"], g["partitions"]) == (None, None, [])
        last_success = failed["last_success_at"]
        assert last_success is not None
        assert failed["at"] > last_success

        # Sampling goes on and keeps failing: attempts advance, the last success does not.
        first_attempt = await metric(client, "lagmon_last_sample_timestamp_seconds")
        assert first_attempt is not None

        async def attempted_again() -> bool:
            latest = await metric(client, "lagmon_last_sample_timestamp_seconds")
            return latest is not None and latest > first_attempt

        await wait_until(attempted_again, timeout=30, what="another failed sample")
        frozen = await metric(client, "lagmon_last_successful_sample_timestamp_seconds")
        assert frozen == pytest.approx(last_success)
        assert await metric(client, "lagmon_group_status", group=group) == 6.0
        assert await metric(client, "lagmon_group_lag_messages", group=group) is None
        failures = await metric(client, "lagmon_sample_failures_total")
        assert failures is not None
        assert failures > 0

        async def not_ready() -> bool:
            # Ready means a successful sample within max(3 x poll, 15 s).
            return (await client.get("/readyz")).status_code == 503

        await wait_until(not_ready, timeout=30, interval=0.5, what="/readyz 503")

        # Kafka back: the monitor reconnects by itself, the groups are judged again.
        await kafka_outage.end()

        async def recovered() -> bool:
            seen = await groups(client)
            return seen.get(group, {}).get("status") == "OK"

        await wait_until(recovered, timeout=120, interval=0.5, what=f"{group} OK again")
        again = await metric(client, "lagmon_last_successful_sample_timestamp_seconds")
        assert again is not None
        assert again > last_success

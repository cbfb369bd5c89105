"""`python -m lagmon` as a process against the real Kafka: the JSON API, /metrics, the probes,
the CLI (local and --server), and the page rendered by a real headless browser."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from blog_testkit import ServiceProcess, Stack, processes, wait_until

Rewind = Callable[[int], Awaitable[None]]

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"


async def produce_and_commit(bootstrap: str, topic: str, groups: dict[str, int]) -> None:
    """5 records on partition 0; each group commits its offset there and leaves (Empty)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for _ in range(5):
            # One by one and acknowledged: the lags below are exact only if all 5 are written.
            await producer.send_and_wait(topic, b"{}", partition=0)
    finally:
        await producer.stop()
    for group, offset in groups.items():
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.commit({TopicPartition(topic, 0): offset})
        finally:
            await consumer.stop()


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


def chromium_args(profile: str) -> list[str]:
    return [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        "--window-size=1280,900", "--virtual-time-budget=5000",
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def rewinding_member(bootstrap: str, group: str, topic: str) -> AsyncIterator[Rewind]:
    """A live member of `group` on partition 0 of `topic`; `rewind(offset)` commits an offset."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", heartbeat_interval_ms=500,
    )  # fmt: skip
    await consumer.start()
    try:

        async def assigned() -> bool:
            await asyncio.sleep(0)
            return bool(consumer.assignment())

        await wait_until(assigned, timeout=30, what=f"{group} gets its partitions")

        async def commit(offset: int) -> None:
            await consumer.commit({TopicPartition(topic, 0): offset})

        yield commit
    finally:
        await consumer.stop()


async def test_server_api_metrics_cli_and_page(
    stack: Stack, topic: str, service_processes: Callable[..., ServiceProcess]
) -> None:
    caught_up, behind = f"{topic}-caught-up", f"{topic}-behind"
    never, rewound = f"{topic}-never", f"{topic}-rewound"
    await produce_and_commit(stack.kafka_bootstrap, topic, {caught_up: 5, behind: 2})
    env = {
        "LAGMON_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "LAGMON_TOPICS": json.dumps([topic]),
        "LAGMON_EXPECTED_GROUPS": f"{caught_up},{never}",
        "LAGMON_POLL_INTERVAL_S": "0.5",
        "LAGMON_WINDOW_S": "60",
        "LAGMON_STALL_AFTER_S": "3",
    }
    server = service_processes("lagmon", "lagmon", env)
    server.env["LAGMON_PORT"] = str(server.port)
    await server.start()

    async with (
        httpx.AsyncClient(base_url=server.url, timeout=5) as client,
        rewinding_member(stack.kafka_bootstrap, rewound, topic) as rewind,
    ):
        await rewind(4)

        async def both_groups() -> dict[str, Any] | None:
            body: dict[str, Any] = (await client.get("/api/lag")).json()
            names = {g["group"] for g in body.get("groups", [])}
            return body if {caught_up, behind} <= names else None

        snapshot = await wait_until(both_groups, timeout=30, what="both groups in /api/lag")
        assert snapshot is not None
        groups = {g["group"]: g for g in snapshot["groups"]}
        assert groups[caught_up]["lag"] == 0
        assert groups[behind]["lag"] == 3
        assert groups[behind]["state"] == "Empty"
        assert groups[behind]["lag_seconds"] >= 0
        assert snapshot["expected_groups"] == [caught_up, never]

        # A dead group that is behind is STOP (2 samples), the caught-up one stays OK, the
        # expected group that never committed is NOTFOUND.
        async def behind_stopped() -> bool:
            body = (await client.get("/api/lag")).json()
            status = {g["group"]: g["status"] for g in body["groups"]}
            assert status[caught_up] == "OK"
            assert status[never] == "NOTFOUND"
            return bool(status[behind] == "STOP")

        await wait_until(behind_stopped, timeout=30, interval=0.5, what=f"{behind} STOP")

        # The live member commits an older offset: REWIND (with its members and state).
        async def sampled_at_4() -> bool:
            seen = {g["group"]: g for g in (await client.get("/api/lag")).json()["groups"]}
            return rewound in seen and seen[rewound]["partitions"][0]["committed_offset"] == 4

        await wait_until(sampled_at_4, timeout=30, interval=0.5, what=f"{rewound} sampled")
        await rewind(1)

        async def rewinding() -> dict[str, Any] | None:
            seen = {g["group"]: g for g in (await client.get("/api/lag")).json()["groups"]}
            return seen[rewound] if seen[rewound]["status"] == "REWIND" else None

        replay = await wait_until(rewinding, timeout=30, interval=0.5, what=f"{rewound} REWIND")
        assert replay is not None
        assert (replay["state"], replay["members"]) == ("Stable", 1)
        assert "moved back from 4 to 1" in replay["reason"]

        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        metrics = (await client.get("/metrics")).text
        labels = f'group="{behind}",partition="0",topic="{topic}"'
        assert f"lagmon_partition_lag_messages{{{labels}}} 3.0" in metrics
        assert f"lagmon_partition_committed_offset{{{labels}}} 2.0" in metrics
        assert f"lagmon_partition_end_offset{{{labels}}} 5.0" in metrics
        assert f"lagmon_partition_status{{{labels}}} 4.0" in metrics  # STOP
        assert f'lagmon_group_status{{group="{behind}"}} 4.0' in metrics
        assert f'lagmon_group_status{{group="{never}"}} 5.0' in metrics  # NOTFOUND
        assert f'lagmon_group_status{{group="{rewound}"}} 2.0' in metrics  # REWIND
        assert f'lagmon_group_members{{group="{rewound}",state="Stable"}} 1.0' in metrics
        assert "lagmon_last_successful_sample_timestamp_seconds " in metrics
        history = (await client.get("/api/history", params={"minutes": 5})).json()
        assert len(history["groups"][behind]) >= 3
        assert {p["status"] for p in history["groups"][behind]} >= {"WARN", "STOP"}

        await check_cli(server.url, env, caught_up, behind)
        await check_page_in_browser(server.url, caught_up, behind, never, rewound)


async def check_cli(url: str, env: dict[str, str], caught_up: str, behind: str) -> None:
    # The CLI, reading the server...
    code, output = await run(sys.executable, "-m", "lagmon", "status", "--server", url, "--json")
    assert code == 0, output
    from_server = {g["group"]: g for g in json.loads(output)["groups"]}
    assert from_server[behind]["status"] == "STOP"
    # ... and sampling Kafka itself (two samples: enough for STOP, lag and no member in both).
    code, output = await run(
        sys.executable, "-m", "lagmon", "status", "--interval", "1", "--partitions",
        "--group", behind, "--group", caught_up, env=env,
    )  # fmt: skip
    assert code == 0, output
    rows = {line.split()[0]: line.split() for line in output.splitlines()[2:4]}
    assert rows[caught_up][1:5] == ["OK", "Empty", "0", "0"]
    assert rows[behind][1] == "STOP"
    assert rows[behind][4] == "3"
    assert "no consumer (Empty) with lag 3 for 2 samples" in output


def chromium_installed() -> bool:
    return Path(CHROMIUM).exists()


async def check_page_in_browser(
    url: str, caught_up: str, behind: str, never: str, rewound: str
) -> None:
    if not chromium_installed():
        pytest.skip(f"{CHROMIUM} missing: run scripts/ensure-chromium.sh")
    screenshot = processes.artifacts_dir / "lagmon-page.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    profile = tempfile.mkdtemp(prefix="lagmon-chromium-")
    try:
        code, dom = await run(*chromium_args(profile), "--dump-dom", f"{url}/")
        assert code == 0, dom
        rows = group_rows(dom)
        # Rows are built by the page's script from /api/lag: the JS ran and fetched.
        assert set(rows) >= {caught_up, behind, never, rewound}, dom[-3000:]
        # Each group's status, the reason of it, Kafka's state and members.
        assert rows[caught_up]["status"] == "OK"
        assert rows[behind]["status"] == "STOP"
        assert rows[behind]["reason"].startswith(f"{topic_of(behind)}[0]: no consumer (Empty)")
        assert (rows[behind]["state"], rows[behind]["members"]) == ("Empty", "0")
        assert rows[never]["status"] == "NOTFOUND"
        assert "expected group has no committed offset" in rows[never]["reason"]
        assert "expected" in rows[never]["name"]
        assert rows[rewound]["status"] == "REWIND"
        assert "moved back from 4 to 1" in rows[rewound]["reason"]
        assert (rows[rewound]["state"], rows[rewound]["members"]) == ("Stable", "1")
        assert 'class="status STOP"' in dom
        assert "<polyline" in dom  # the chart was drawn from /api/history
        code, output = await run(*chromium_args(profile), f"--screenshot={screenshot}", f"{url}/")
        assert code == 0, output
        assert screenshot.exists(), output
        assert screenshot.stat().st_size > 10_000, output
    finally:
        shutil.rmtree(profile, ignore_errors=True)


GROUP_ROW = re.compile(r'<tr data-group="([^"]+)" data-status="([A-Z]+)">(.*?)<details>', re.S)
CELL = re.compile(r"<td[^>]*>(.*?)</td>", re.S)


def group_rows(dom: str) -> dict[str, dict[str, str]]:
    """group -> its row's cells as the browser rendered them (name, status, reason, state,
    members)."""
    rows = {}
    for group, status, cells_html in GROUP_ROW.findall(dom):
        cells = [re.sub(r"<[^>]+>", " ", cell).strip() for cell in CELL.findall(cells_html)]
        name, shown_status, reason, state, members = cells[:5]
        assert shown_status == status
        rows[group] = {
            "name": name, "status": status, "reason": html.unescape(reason), "state": state,
            "members": members,
        }  # fmt: skip
    return rows


def topic_of(group: str) -> str:
    return group.rsplit("-", 1)[0]

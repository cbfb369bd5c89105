"""End to end with the real services as processes: while blogs are being posted, stopping the
indexer makes its lag (messages and seconds) grow and its status leave OK (STOP: no member), while
the counter stays OK; restarting the indexer brings it back to OK with no lag."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from blog_testkit import ServiceProcess, Stack, wait_until
from blog_testkit.plugin import create_dead_letter_topics

pytestmark = pytest.mark.e2e


async def create_author(env: dict[str, str]) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "publisher", "create-author", "--name", "lag-e2e",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    token: str = json.loads(out.decode().strip().splitlines()[-1])["token"]
    return token


async def test_stopped_indexer_lags_and_recovers_while_counter_stays_ok(
    stack: Stack,
    topic: str,
    database_url: str,
    es_prefix: str,
    service_processes: Callable[..., ServiceProcess],
) -> None:
    counter_group, indexer_group = f"{topic}-counter", f"{topic}-indexer"
    await create_dead_letter_topics(stack.kafka_bootstrap, topic, [counter_group, indexer_group])
    kafka = {"KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap, "TOPIC": topic}
    publisher_env = {f"PUBLISHER_{k}": v for k, v in kafka.items()} | {
        "PUBLISHER_DATABASE_URL": database_url,
        "PUBLISHER_STATUS_GROUPS": json.dumps([counter_group, indexer_group]),
    }
    counter_env = {f"COUNTER_{k}": v for k, v in kafka.items()} | {
        "COUNTER_DATABASE_URL": database_url,
        "COUNTER_GROUP_ID": counter_group,
    }
    indexer_env = {f"INDEXER_{k}": v for k, v in kafka.items()} | {
        "INDEXER_ES_URL": stack.es_url,
        "INDEXER_GROUP_ID": indexer_group,
        "INDEXER_INDEX_ALIAS": es_prefix,
    }
    lagmon_env = {
        "LAGMON_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "LAGMON_TOPICS": json.dumps([topic]),
        "LAGMON_EXPECTED_GROUPS": f"{counter_group},{indexer_group}",
        "LAGMON_POLL_INTERVAL_S": "0.5",
        "LAGMON_WINDOW_S": "10",
        "LAGMON_STALL_AFTER_S": "3",
    }
    processes = {}
    for name, module, env, prefix in [
        ("counter", "counter", counter_env, "COUNTER"),
        ("indexer", "indexer", indexer_env, "INDEXER"),
        ("publisher", "publisher", publisher_env, "PUBLISHER"),
        ("lagmon", "lagmon", lagmon_env, "LAGMON"),
    ]:
        process = service_processes(f"lag-e2e-{name}", module, env)
        process.env[f"{prefix}_PORT"] = str(process.port)
        processes[name] = process
    token = await create_author(publisher_env)
    for process in processes.values():
        await process.start()
    publisher, indexer, lagmon = processes["publisher"], processes["indexer"], processes["lagmon"]

    async with httpx.AsyncClient(timeout=10) as http:
        headers = {"Authorization": f"Bearer {token}"}
        posted = 0

        async def post_blog() -> None:
            nonlocal posted
            response = await http.post(
                f"{publisher.url}/blogs",
                json={"title": f"Lag {posted}", "body": "Consumer lag.", "tags": ["kafka"]},
                headers=headers,
            )
            assert response.status_code == 202, response.text
            posted += 1

        async def groups() -> dict[str, dict[str, Any]]:
            body = (await http.get(f"{lagmon.url}/api/lag")).json()
            return {g["group"]: g for g in body.get("groups", [])}

        async def both_ok_and_caught_up() -> bool:
            seen = await groups()
            return all(
                g in seen and seen[g]["status"] == "OK" and seen[g]["lag"] == 0
                for g in (counter_group, indexer_group)
            )

        for _ in range(5):
            await post_blog()
        await wait_until(
            both_ok_and_caught_up, timeout=60, interval=0.5, what="both groups caught up, OK"
        )

        # Stop the indexer; posting goes on.
        assert await indexer.terminate() == 0
        indexer_samples: list[dict[str, Any]] = []
        counter_statuses: list[str] = []

        async def indexer_left_ok() -> bool:
            await post_blog()
            seen = await groups()
            indexer_samples.append(seen[indexer_group])
            counter_statuses.append(seen[counter_group]["status"])
            latest = seen[indexer_group]
            return bool(latest["status"] != "OK" and len(indexer_samples) >= 5)

        await wait_until(indexer_left_ok, timeout=60, interval=0.5, what="indexer status != OK")
        lags = [s["lag"] for s in indexer_samples]
        lag_seconds = [s["lag_seconds"] for s in indexer_samples if s["lag_seconds"] is not None]
        # Nobody consumes: the lag only grows, and so does the age of the oldest unprocessed blog.
        assert lags == sorted(lags), lags
        assert lags[-1] > lags[0], lags
        assert lag_seconds[-1] > lag_seconds[0], lag_seconds
        assert lag_seconds[-1] > 0, lag_seconds
        assert indexer_samples[-1]["state"] == "Empty"
        assert indexer_samples[-1]["members"] == 0
        assert indexer_samples[-1]["status"] in {"WARN", "STALL", "STOP"}
        assert set(counter_statuses) == {"OK"}, counter_statuses

        # It keeps getting worse while it is down: STOP after a whole window.
        async def indexer_stopped() -> bool:
            await post_blog()
            seen = await groups()
            counter_statuses.append(seen[counter_group]["status"])
            return bool(seen[indexer_group]["status"] == "STOP")

        await wait_until(indexer_stopped, timeout=60, interval=0.5, what="indexer STOP")
        assert set(counter_statuses) == {"OK"}, counter_statuses

        metrics = (await http.get(f"{lagmon.url}/metrics")).text
        assert f'lagmon_group_status{{group="{indexer_group}"}} 4.0' in metrics  # STOP
        assert f'lagmon_group_status{{group="{counter_group}"}} 0.0' in metrics

        # Restart it: it catches up and is OK again.
        await indexer.start()
        await wait_until(
            both_ok_and_caught_up, timeout=60, interval=0.5, what="indexer back to OK, lag 0"
        )
        recovered = (await groups())[indexer_group]
        assert recovered["lag_seconds"] == 0.0
        assert recovered["state"] == "Stable"
        assert recovered["members"] == 1

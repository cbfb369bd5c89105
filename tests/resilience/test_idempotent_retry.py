"""A client whose POST got no answer because the publisher was killed (-9) mid-request retries it
with the same Idempotency-Key, after the publisher is back: in the end there is exactly one blog
and one event, whether the kill came before the write committed or after.

- "while writing": the write is held on a table lock the test takes (seen in pg_locks) and the
  test sends SIGKILL to the publisher; the transaction dies with its connection.
- "after committing": the publisher, run through `blog_testkit.faults`, sends itself SIGKILL once
  the request's transaction has committed and before the answer goes out.

The transcript of each run is printed (`pytest -s` shows it).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Callable

import asyncpg
import httpx
import pytest

from blog_testkit import ServiceProcess, Stack, free_port, read_topic, wait_until
from blog_testkit.faults import FAULTY_SERVICE_MODULE, faulty_service_env

pytestmark = pytest.mark.e2e

KEY = "7d5c2f4e-retry-after-kill"
BODY = {"title": "Posted once", "body": "Whatever the network did.", "tags": ["retry"]}
RETRY_DEADLINE_S = 60.0


async def create_author(env: dict[str, str]) -> tuple[str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "publisher", "create-author", "--name", "retrier",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    created = json.loads(out)
    return created["author_id"], created["token"]


async def retry_until_answered(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], log: list[str]
) -> httpx.Response:
    """What a careful client does: the same request, same key, until it gets an answer that is
    not "in flight" (409) nor a connection failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RETRY_DEADLINE_S
    attempt = 1
    while True:
        attempt += 1
        try:
            response = await http.post(url, json=BODY, headers=headers)
        except httpx.TransportError as exc:
            log.append(f"attempt {attempt}: {type(exc).__name__} (publisher not answering)")
        else:
            log.append(
                f"attempt {attempt}: {response.status_code} {response.text}"
                f" Idempotent-Replayed={response.headers.get('Idempotent-Replayed')}"
            )
            if response.status_code != 409:
                return response
        assert loop.time() < deadline, "\n".join(log)
        await asyncio.sleep(0.5)  # the client's retry pause (load, not synchronisation)


@pytest.mark.parametrize("kill", ["while writing", "after committing"])
async def test_a_post_retried_after_the_publisher_was_killed_writes_once(
    stack: Stack,
    database_url: str,
    topic: str,
    service_processes: Callable[..., ServiceProcess],
    kill: str,
) -> None:
    port = free_port()
    env = {
        "PUBLISHER_DATABASE_URL": database_url,
        "PUBLISHER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "PUBLISHER_TOPIC": topic,
        "PUBLISHER_STATUS_GROUPS": "[]",
    }
    if kill == "while writing":
        first = service_processes("publisher-killed", "publisher", env, port)
    else:
        first = service_processes(
            "publisher-dying",
            FAULTY_SERVICE_MODULE,
            {**env, **faulty_service_env("publisher", port, kill_before_answering="POST /blogs")},
            port,
        )
    await first.start()
    author_id, token = await create_author(env)
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f'"{KEY}"'}
    url = f"{first.url}/blogs"
    log = [f"case: killed {kill}"]
    db = await asyncpg.connect(database_url)
    try:
        async with httpx.AsyncClient(timeout=30.0) as http:
            if kill == "while writing":
                lock = db.transaction()
                await lock.start()
                await db.execute("LOCK TABLE publisher.outbox IN EXCLUSIVE MODE")
                pending = asyncio.create_task(http.post(url, json=BODY, headers=headers))

                async def write_waiting() -> bool:
                    waiting: int = await db.fetchval(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted"
                        " AND relation = 'publisher.outbox'::regclass"
                    )
                    return waiting > 0

                await wait_until(write_waiting, timeout=30, what="the POST mid-transaction")
                first.kill()  # SIGKILL
                log.append(f"publisher killed (-9) mid-request, exit {await first.wait_exit(30)}")
                await lock.rollback()
            else:
                pending = asyncio.create_task(http.post(url, json=BODY, headers=headers))
                log.append(f"publisher killed itself (-9), exit {await first.wait_exit(30)}")
            try:
                answer = await pending
                log.append(f"attempt 1: unexpected answer {answer.status_code}")
            except httpx.TransportError as exc:
                log.append(f"attempt 1: {type(exc).__name__} (no answer)")
            written: int = await db.fetchval("SELECT count(*) FROM publisher.blogs")
            log.append(f"blogs written before the retry: {written}")
            assert written == (1 if kill == "after committing" else 0)

            again = service_processes("publisher-restarted", "publisher", env, port)
            await again.start()
            response = await retry_until_answered(http, url, headers, log)
            assert response.status_code == 202, response.text
            replayed = response.headers.get("Idempotent-Replayed") == "true"
            assert replayed is (kill == "after committing")
            blog_id = response.json()["id"]
            assert response.headers["Location"] == response.json()["status_url"]
            # Once more: the same answer, still nothing new.
            once_more = await http.post(url, json=BODY, headers=headers)
            assert once_more.json() == response.json()
            log.append(f"one more retry: {once_more.status_code}, same answer")

            async def relayed() -> bool:
                unsent: int = await db.fetchval(
                    "SELECT count(*) FROM publisher.outbox WHERE sent_at IS NULL"
                )
                return unsent == 0

            await wait_until(relayed, timeout=60, what="the outbox relayed")
            await again.terminate()
        blogs = await db.fetch(
            "SELECT id FROM publisher.blogs WHERE author_id = $1", uuid.UUID(author_id)
        )
        outbox = await db.fetchval("SELECT count(*) FROM publisher.outbox")
    finally:
        await db.close()
    events = await read_topic(stack.kafka_bootstrap, topic)
    log.append(
        f"in the end: blogs={len(blogs)} (id {blogs[0]['id'] if blogs else None}),"
        f" outbox rows={outbox}, events on {topic}={len(events)}"
        f" (keys {sorted({bytes(e.key or b'').decode() for e in events})})"
    )
    print("\n" + "\n".join(log))
    assert [str(row["id"]) for row in blogs] == [blog_id]
    assert outbox == 1
    assert [bytes(e.key or b"").decode() for e in events] == [blog_id]

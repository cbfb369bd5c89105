"""The relay's leader frozen (SIGSTOP) under load: the other publisher replica takes the relay
lock within the stated bound, every accepted write is delivered (counted and indexed exactly
once), and once thawed (SIGCONT) the old leader finds its lock session ended and marks nothing.

The bound (publisher.relay_lock): PostgreSQL ends the frozen leader's session
`relay_lock_idle_timeout_s` (T = 10 s) after its last statement, which frees the lock; the standby
asks every `relay_standby_retry_s` (2 s). So the takeover is at most T + 2 s after the freeze
(the leader touches its session every T/4 while alive, so from the freeze it is 7.5..12 s), and
T + `relay_lock_statement_timeout_s` + 2 s = 22 s if it froze in the middle of a statement.
NoRelayLeader's `for: 2m` is well above both.

    make test-e2e ARGS="tests/resilience/test_relay_takeover.py -s"   # prints the figures
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from elasticsearch import AsyncElasticsearch

from blog_events import decode_event
from blog_testkit import ServiceProcess, Stack, read_topic, wait_until
from blog_testkit.plugin import create_dead_letter_topics
from publisher.auth import create_author
from publisher.settings import PublisherSettings
from tests.chaos.chaos_run import ChaosReport, Load, check_invariants, committed_everywhere
from tests.resilience.support import metric

pytestmark = [pytest.mark.e2e]

AUTHORS = 12
WORKERS = 4
WRITE_INTERVAL_S = 0.25  # per worker: ~16 writes/s in all
SETTLE_TIMEOUT_S = 180.0
FIGURES_FILE = "relay-takeover.json"

DEFAULTS = PublisherSettings(database_url="postgresql://unused")
IDLE_TIMEOUT_S = DEFAULTS.relay_lock_idle_timeout_s
STATEMENT_TIMEOUT_S = DEFAULTS.relay_lock_statement_timeout_s
STANDBY_RETRY_S = DEFAULTS.relay_standby_retry_s
# The stated bounds, frozen while idle and frozen mid-statement.
IDLE_BOUND_S = IDLE_TIMEOUT_S + STANDBY_RETRY_S
WORST_BOUND_S = IDLE_TIMEOUT_S + STATEMENT_TIMEOUT_S + STANDBY_RETRY_S
# A loaded 2-core machine (connecting, scheduling) on top of the bound.
SLACK_S = 5.0


async def relay_role(http: httpx.AsyncClient, process: ServiceProcess) -> str:
    response = await http.get(f"{process.url}/readyz", timeout=2.0)
    role: str = response.json()["relay"]
    return role


def identity(process: ServiceProcess) -> str:
    """What the process's relay writes in outbox.sent_by (publisher.relay_lock.relay_identity)."""
    return f"{socket.gethostname()}:{process.pid}"


@contextlib.asynccontextmanager
async def paced_load(
    load: Load, http: httpx.AsyncClient, report: ChaosReport
) -> AsyncIterator[None]:
    stopping = asyncio.Event()

    async def worker() -> None:
        while not stopping.is_set():
            started = time.monotonic()
            await load.one(http, report)
            # Pacing of the load generator, not a wait for an outcome.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stopping.wait(), max(0.0, WRITE_INTERVAL_S - (time.monotonic() - started))
                )

    workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    try:
        yield
    finally:
        stopping.set()
        await asyncio.gather(*workers)


async def test_a_frozen_leader_is_replaced_within_the_bound_and_marks_nothing_once_thawed(
    stack: Stack,
    database_url: str,
    topic: str,
    es_prefix: str,
    service_processes: Callable[..., ServiceProcess],
    pytestconfig: pytest.Config,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    groups = [f"counter-{suffix}", f"indexer-{suffix}"]
    alias = f"{es_prefix}blogs"
    await create_dead_letter_topics(stack.kafka_bootstrap, topic, groups)
    publisher_env = {
        "PUBLISHER_DATABASE_URL": database_url,
        "PUBLISHER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "PUBLISHER_TOPIC": topic,
        "PUBLISHER_STATUS_GROUPS": json.dumps(groups),
    }
    publishers = [
        service_processes(f"takeover-publisher-{n}", "publisher", publisher_env) for n in (1, 2)
    ]
    counter = service_processes(
        "takeover-counter",
        "counter",
        {
            "COUNTER_DATABASE_URL": database_url,
            "COUNTER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
            "COUNTER_TOPIC": topic,
            "COUNTER_GROUP_ID": groups[0],
        },
    )
    indexer = service_processes(
        "takeover-indexer",
        "indexer",
        {
            "INDEXER_ES_URL": stack.es_url,
            "INDEXER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
            "INDEXER_TOPIC": topic,
            "INDEXER_GROUP_ID": groups[1],
            "INDEXER_INDEX_ALIAS": alias,
        },
    )
    await publishers[0].start(timeout=120)  # migrates the database before the others share it
    await asyncio.gather(publishers[1].start(timeout=120), counter.start(120), indexer.start(120))
    db = await asyncpg.connect(database_url)
    es = AsyncElasticsearch(stack.es_url, request_timeout=30)
    frozen: ServiceProcess | None = None
    try:
        tokens = {}
        for n in range(AUTHORS):
            author_id, token = await create_author(db, f"takeover-{n}")
            tokens[str(author_id)] = token
        report = ChaosReport()
        load = Load(publishers, tokens, seed=20261211)
        limits = httpx.Limits(keepalive_expiry=2.0)
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:

            async def roles() -> list[str]:
                return [await relay_role(http, p) for p in publishers]

            async def one_leader() -> list[str]:
                found = await roles()
                return found if sorted(found) == ["leader", "standby"] else []

            leading = await wait_until(one_leader, timeout=60, what="one relay leader")
            leader = publishers[leading.index("leader")]
            survivor = publishers[1 - leading.index("leader")]

            async def sent_by(process: ServiceProcess, since: float = 0.0) -> int:
                count: int = await db.fetchval(
                    "SELECT count(*) FROM publisher.outbox WHERE sent_by = $1"
                    " AND sent_at >= to_timestamp($2)",
                    identity(process),
                    since,
                )
                return count

            async with paced_load(load, http, report):

                async def flowing() -> bool:
                    return report.requests_accepted >= 40 and await sent_by(leader) >= 40

                await wait_until(flowing, timeout=120, what="writes accepted and relayed")
                # The balancer stops sending to the frozen replica (it would not answer).
                load.publishers = [survivor]
                frozen = leader
                assert leader.pid is not None
                stopped_db: float = await db.fetchval("SELECT extract(epoch FROM now())::float8")
                os.kill(leader.pid, signal.SIGSTOP)
                stopped_at = time.monotonic()

                async def survivor_leads() -> bool:
                    return await relay_role(http, survivor) == "leader"

                await wait_until(
                    survivor_leads,
                    timeout=WORST_BOUND_S + SLACK_S,
                    what="the standby took the relay lock",
                    interval=0.1,
                )
                takeover_s = time.monotonic() - stopped_at

                async def survivor_sends() -> bool:
                    return await sent_by(survivor, stopped_db) >= 30

                await wait_until(survivor_sends, timeout=60, what="the new leader sends")
                first_send_s: float = await db.fetchval(
                    "SELECT extract(epoch FROM min(sent_at))::float8 - $2 FROM publisher.outbox"
                    " WHERE sent_by = $1",
                    identity(survivor),
                    stopped_db,
                )
                marked_while_frozen = await sent_by(leader, stopped_db)
                thawed_db: float = await db.fetchval("SELECT extract(epoch FROM now())::float8")
                os.kill(leader.pid, signal.SIGCONT)
                frozen = None
                thawed_at = time.monotonic()

                async def noticed() -> bool:
                    return "outbox relay: leadership lost" in leader.log_text()

                await wait_until(noticed, timeout=30, what="the old leader noticed", interval=0.1)
                noticed_s = time.monotonic() - thawed_at
                assert await relay_role(http, leader) == "standby"
                assert await metric(http, leader.url, "publisher_relay_leader") == 0
                assert await metric(http, survivor.url, "publisher_relay_leader") == 1
                assert await metric(http, leader.url, "publisher_relay_leadership_lost_total") == 1
                # Both replicas serve writes again; the new leader keeps relaying.
                load.publishers = [leader, survivor]
                accepted = report.requests_accepted

                async def more_writes() -> bool:
                    return report.requests_accepted >= accepted + 30

                await wait_until(more_writes, timeout=60, what="writes after the thaw")

            async def drained() -> bool:
                unsent: int = await db.fetchval(
                    "SELECT count(*) FROM publisher.outbox WHERE sent_at IS NULL"
                )
                return unsent == 0

            await wait_until(drained, timeout=SETTLE_TIMEOUT_S, what="outbox drained")
            await wait_until(
                lambda: committed_everywhere(stack.kafka_bootstrap, topic, groups),
                timeout=SETTLE_TIMEOUT_S,
                what="both groups caught up",
                interval=0.5,
            )
            await es.indices.refresh(index=alias)
            check = ChaosReport()
            await check_invariants(db, es, alias, load, check)
            assert check.duplicates == 0, check.problems[:10]
            assert check.missing == 0, check.problems[:10]

            # Fencing: nothing marked by the old leader after the thaw, every row marked once,
            # at the position of a record that carries its event.
            late_marks = await sent_by(leader, thawed_db)
            assert late_marks == 0, f"{late_marks} rows marked by the old leader after the thaw"
            rows = await db.fetch(
                "SELECT event_id, kafka_partition, kafka_offset, sent_by FROM publisher.outbox"
            )
            records = await read_topic(stack.kafka_bootstrap, topic)
            at_position = {(r.partition, r.offset): decode_event(r.value).event_id for r in records}
            for row in rows:
                assert row["sent_by"] in (identity(leader), identity(survivor)), row
                position = (row["kafka_partition"], row["kafka_offset"])
                assert at_position.get(position) == row["event_id"], row
            sends = Counter(decode_event(r.value).event_id for r in records)
            resent = sum(1 for count in sends.values() if count > 1)
            assert set(sends) == {row["event_id"] for row in rows}  # every write delivered

        figures: dict[str, Any] = {
            "idle_session_timeout_s": IDLE_TIMEOUT_S,
            "statement_timeout_s": STATEMENT_TIMEOUT_S,
            "standby_retry_s": STANDBY_RETRY_S,
            "bound_frozen_idle_s": IDLE_BOUND_S,
            "bound_frozen_mid_statement_s": WORST_BOUND_S,
            "takeover_s": round(takeover_s, 2),
            "first_send_by_new_leader_s": round(first_send_s, 2),
            "rows_marked_by_old_leader_while_frozen": marked_while_frozen,
            "rows_marked_by_old_leader_after_thaw": late_marks,
            "old_leader_noticed_after_thaw_s": round(noticed_s, 2),
            "events_sent_twice": resent,
            "outbox_rows": len(rows),
            "writes_accepted": report.requests_accepted,
            "writes_unknown_outcome": report.requests_unknown,
            "writes_rejected": report.requests_rejected,
        }
        line = json.dumps(figures)
        print(f"relay takeover figures: {line}")
        artifacts = Path(pytestconfig.rootpath) / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        with (artifacts / FIGURES_FILE).open("a", encoding="utf-8") as out:
            out.write(line + "\n")
        assert takeover_s <= WORST_BOUND_S + SLACK_S
    finally:
        if frozen is not None and frozen.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(frozen.pid, signal.SIGCONT)
        await db.close()
        await es.close()
        for process in (*publishers, counter, indexer):
            with contextlib.suppress(Exception):
                await process.terminate()

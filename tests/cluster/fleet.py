"""The cluster tests' system under load: two publishers, two counters and two indexers as
processes on one database, topic (with each group's dead-letter topic) and index alias; a load
of posts, updates and deletes by many authors through both publishers; the chaos run's
invariants; and a timeline of the relay's sends and the groups' commits to measure failover
gaps."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from elasticsearch import AsyncElasticsearch

from blog_testkit import ServiceProcess, Stack, free_port, wait_until
from blog_testkit.plugin import (
    create_service_database,
    create_topic,
    delete_indices,
    delete_topic,
    drop_database,
    unique_name,
)
from publisher.auth import create_author
from service_kit.kafka_admin import admin_client
from tests.chaos.chaos_run import ChaosReport, Load, check_invariants, committed_everywhere

AUTHORS = 30
WORKERS = 4
# Per worker: ~16 writes/s in all, enough to see a stall at once, light on a 2-core machine.
WRITE_INTERVAL_S = 0.25
CONVERGE_TIMEOUT_S = 300.0
FIGURES_FILE = "cluster-failover.json"


@dataclass(frozen=True)
class Progress:
    """What `Fleet.wait_flowing` saw: (more accepted, wanted), (more sent, wanted), and per group
    (committed now, committed before). Truthy once everything moved."""

    accepted: tuple[int, int]
    sent: tuple[int, int]
    committed: dict[str, tuple[int, int]]

    def __bool__(self) -> bool:
        return (
            self.accepted[0] >= self.accepted[1]
            and self.sent[0] >= self.sent[1]
            and all(now > before for now, before in self.committed.values())
        )


@dataclass
class Fleet:
    stack: Stack
    topic: str
    groups: list[str]
    alias: str
    database_url: str
    db: asyncpg.Connection
    es: AsyncElasticsearch
    http: httpx.AsyncClient
    publishers: list[ServiceProcess]
    counters: list[ServiceProcess]
    indexers: list[ServiceProcess]
    load: Load
    report: ChaosReport = field(default_factory=ChaosReport)

    @property
    def services(self) -> list[ServiceProcess]:
        return [*self.publishers, *self.counters, *self.indexers]

    async def sent_rows(self) -> int:
        sent: int = await self.db.fetchval(
            "SELECT count(*) FROM publisher.outbox WHERE sent_at IS NOT NULL"
        )
        return sent

    async def unsent(self) -> tuple[int, float]:
        """(unsent outbox rows, age in seconds of the oldest)."""
        row = await self.db.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS age"
            " FROM publisher.outbox WHERE sent_at IS NULL"
        )
        assert row is not None
        return int(row["n"]), float(row["age"] or 0.0)

    async def committed_total(self, group: str) -> int:
        async with admin_client(self.stack.kafka_bootstrap, request_timeout_ms=3000) as admin:
            offsets = await admin.list_consumer_group_offsets(group)
        return sum(meta.offset for tp, meta in offsets.items() if tp.topic == self.topic)

    async def wait_flowing(self, writes: int = 40, timeout: float = 120.0) -> None:  # noqa: ASYNC109
        """Until `writes` more writes were accepted and sent to Kafka, and both groups committed
        since: the whole pipeline moves."""
        accepted = self.report.requests_accepted
        sent = await self.sent_rows()

        async def committed_now() -> dict[str, int]:
            # Raises while a group's coordinator is failing over: wait_until retries.
            return {group: await self.committed_total(group) for group in self.groups}

        commits = await wait_until(committed_now, timeout=timeout, what="committed offsets")

        async def moving() -> Progress:
            # Every part read each time, so a timeout names the one that does not move.
            committed = {group: await self.committed_total(group) for group in self.groups}
            return Progress(
                accepted=(self.report.requests_accepted - accepted, writes),
                sent=(await self.sent_rows() - sent, writes),
                committed={g: (committed[g], commits[g]) for g in self.groups},
            )

        await wait_until(moving, timeout=timeout, what="writes accepted, relayed and committed")

    async def converge_and_check(self) -> float:
        """Wait until everything accepted is relayed and processed by both groups, then check
        the chaos invariants (no write lost or doubled, index at each blog's latest version).
        Returns the seconds it took to converge."""
        started = time.monotonic()

        async def drained() -> bool:
            return (await self.unsent())[0] == 0

        await wait_until(drained, timeout=CONVERGE_TIMEOUT_S, what="outbox drained", interval=0.5)
        await wait_until(
            lambda: committed_everywhere(self.stack.kafka_bootstrap, self.topic, self.groups),
            timeout=CONVERGE_TIMEOUT_S,
            what="both groups caught up",
            interval=0.5,
        )
        await self.es.indices.refresh(index=self.alias)
        converged = round(time.monotonic() - started, 1)
        check = ChaosReport()
        await check_invariants(self.db, self.es, self.alias, self.load, check)
        assert check.duplicates == 0, check.problems[:10]
        assert check.missing == 0, check.problems[:10]
        assert self.report.requests_accepted > 0
        assert self.report.requests_unknown == 0, self.report.problems
        assert self.report.post_server_errors == 0, "a POST was answered 5xx"
        assert self.report.server_errors == 0, "a write was answered 5xx"
        return converged


@contextlib.asynccontextmanager
async def cluster_fleet(stack: Stack) -> AsyncIterator[Fleet]:
    topic, prefix = unique_name("cluster-"), unique_name("cluster-")
    groups = [f"counter-{prefix}", f"indexer-{prefix}"]
    alias = f"{prefix}blogs"
    # The services as their own roles; the fleet seeds and reads as the platform's admin role.
    database, database_url, service_urls = await create_service_database(
        stack.postgres_dsn, stack.service_dsns, "cluster_"
    )
    await create_topic(stack.kafka_bootstrap, topic, groups=groups)
    kafka = stack.kafka_bootstrap

    def process(name: str, module: str, env: dict[str, str]) -> ServiceProcess:
        return ServiceProcess(name, module, env, free_port())

    publishers = [
        process(
            f"cluster-publisher-{n}",
            "publisher",
            {
                "PUBLISHER_DATABASE_URL": service_urls["publisher"],
                "PUBLISHER_KAFKA_BOOTSTRAP_SERVERS": kafka,
                "PUBLISHER_TOPIC": topic,
                "PUBLISHER_STATUS_GROUPS": json.dumps(groups),
            },
        )
        for n in (1, 2)
    ]
    counters = [
        process(
            f"cluster-counter-{n}",
            "counter",
            {
                "COUNTER_DATABASE_URL": service_urls["counter"],
                "COUNTER_KAFKA_BOOTSTRAP_SERVERS": kafka,
                "COUNTER_TOPIC": topic,
                "COUNTER_GROUP_ID": groups[0],
            },
        )
        for n in (1, 2)
    ]
    indexers = [
        process(
            f"cluster-indexer-{n}",
            "indexer",
            {
                "INDEXER_ES_URL": stack.es_url,
                "INDEXER_KAFKA_BOOTSTRAP_SERVERS": kafka,
                "INDEXER_TOPIC": topic,
                "INDEXER_GROUP_ID": groups[1],
                "INDEXER_INDEX_ALIAS": alias,
            },
        )
        for n in (1, 2)
    ]
    services = [*publishers, *counters, *indexers]
    db = await asyncpg.connect(database_url)
    es = AsyncElasticsearch(stack.es_url, request_timeout=30)
    try:
        # The first publisher migrates the database before the others share it.
        await publishers[0].start(timeout=120)
        await asyncio.gather(*(service.start(timeout=120) for service in services[1:]))
        tokens: dict[str, str] = {}
        for n in range(AUTHORS):
            author_id, token = await create_author(db, f"cluster-{n}")
            tokens[str(author_id)] = token
        # Idle connections are dropped before uvicorn's 5 s keep-alive ends: a request never
        # races the server closing its connection (an outcome the load could not judge).
        limits = httpx.Limits(keepalive_expiry=2.0)
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:
            yield Fleet(
                stack=stack,
                topic=topic,
                groups=groups,
                alias=alias,
                database_url=database_url,
                db=db,
                es=es,
                http=http,
                publishers=publishers,
                counters=counters,
                indexers=indexers,
                load=Load(publishers, tokens, seed=20261202),
            )
    finally:
        for service in services:
            with contextlib.suppress(Exception):
                await service.terminate()
        await db.close()
        await es.close()
        with contextlib.suppress(Exception):
            await delete_indices(stack.es_url, prefix)
        await drop_database(stack.postgres_dsn, database)
        await delete_topic(stack.kafka_bootstrap, topic)


@contextlib.asynccontextmanager
async def running_load(fleet: Fleet) -> AsyncIterator[None]:
    """Writes keep coming (WORKERS paced workers) while the block runs."""
    stopping = asyncio.Event()

    async def worker() -> None:
        while not stopping.is_set():
            started = time.monotonic()
            await fleet.load.one(fleet.http, fleet.report)
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


class Timeline:
    """From a fault on: when the relay marked rows sent (PostgreSQL's clock, same host) and when
    each group's committed offsets moved (polled every 0.25 s). Gaps are measured from the
    fault: the first progress after it, and the longest pause in progress."""

    POLL_S = 0.25

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self.fault_at = 0.0
        self.commits: dict[str, list[float]] = {group: [] for group in fleet.groups}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> Timeline:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task

    def fault(self) -> None:
        self.fault_at = time.time()

    async def _watch(self) -> None:
        last: dict[str, int] = {}
        while not self._stopping.is_set():
            for group in self._fleet.groups:
                with contextlib.suppress(Exception):
                    total = await asyncio.wait_for(self._fleet.committed_total(group), 3)
                    if group in last and total > last[group]:
                        self.commits[group].append(time.time())
                    last[group] = total
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.POLL_S)

    async def relay_sends(self) -> list[float]:
        rows = await self._fleet.db.fetch(
            "SELECT DISTINCT extract(epoch FROM sent_at) AS at FROM publisher.outbox"
            " WHERE sent_at >= to_timestamp($1) ORDER BY at",
            self.fault_at,
        )
        return [float(row["at"]) for row in rows]

    def gaps(self, times: list[float], until: float) -> dict[str, float | None]:
        after = [t for t in times if self.fault_at <= t <= until]
        if not after:
            return {"first_after_s": None, "longest_pause_s": None}
        points = [self.fault_at, *after]
        return {
            "first_after_s": round(after[0] - self.fault_at, 2),
            "longest_pause_s": round(max(b - a for a, b in itertools.pairwise(points)), 2),
        }

    async def figures(self, until: float) -> dict[str, Any]:
        return {
            "relay_send": self.gaps(await self.relay_sends(), until),
            **{f"commit[{g.split('-')[0]}]": self.gaps(c, until) for g, c in self.commits.items()},
        }


def record_figures(rootpath: Path, scenario: str, figures: dict[str, Any]) -> None:
    """Print the measured figures and keep them in test-artifacts/cluster-failover.json."""
    line = json.dumps({"scenario": scenario, **figures})
    print(f"cluster figures: {line}")
    artifacts = rootpath / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with (artifacts / FIGURES_FILE).open("a", encoding="utf-8") as out:
        out.write(line + "\n")

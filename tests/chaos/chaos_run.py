"""The chaos run: while a load generator posts, updates and deletes blogs for many authors, kill -9
the counter, the indexer and the publisher (its relay with it) at random moments and restart them,
and stop and restart Kafka once. On a cluster (KAFKA_NODES=3) every broker is also killed -9 at
least once (one at a time, restarted a few seconds later). Then wait for everything to catch up
and check the promise: a 2xx means counted exactly once and indexed exactly once.

    make chaos N=2000                  # N = write requests; also run small by `make test`
    make chaos KAFKA_NODES=3 N=2000    # the same on the 3-node cluster, with broker kills

Invariants checked (PostgreSQL's publisher.blogs is the truth; a request whose connection died
with the publisher has an unknown outcome, so it is judged by what the database holds):
- every accepted POST exists in publisher.blogs, with exactly one BlogPublished outbox row;
- every accepted write's version is <= the blog's version in the database;
- the outbox is fully sent (no event lost between PostgreSQL and Kafka);
- each author's total_blogs == their live blogs; the counter holds no other author;
- the index holds exactly the live blogs, each at its latest version.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import asyncpg
import httpx
from elasticsearch import AsyncElasticsearch

from blog_testkit import ServiceProcess, free_port, group_lag, wait_until
from blog_testkit.plugin import (
    create_service_database,
    create_topic,
    delete_indices,
    delete_topic,
    drop_database,
    unique_name,
)
from blog_testkit.stack import service_dsns
from publisher.auth import create_author

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "deploy" / "local" / "stack.sh"


@dataclass
class ChaosReport:
    requests_sent: int = 0
    requests_accepted: int = 0
    requests_unknown: int = 0  # the connection died with the publisher: outcome unknown
    requests_rejected: int = 0  # a clear 4xx/5xx answer (e.g. 503 while a dependency was down)
    server_errors: int = 0  # of which 5xx
    post_server_errors: int = 0  # of which 5xx to a POST
    kills: dict[str, int] = field(default_factory=dict)
    broker_kills: dict[str, int] = field(default_factory=dict)
    kafka_restarts: int = 0
    live_blogs: int = 0
    duplicates: int = 0
    missing: int = 0
    problems: list[str] = field(default_factory=list)
    seconds_to_converge: float = 0.0


@dataclass
class Stack:
    kafka: str
    postgres_dsn: str
    es_url: str

    @classmethod
    def from_env(cls) -> Stack:
        return cls(
            os.environ["BLOG_KAFKA_BOOTSTRAP"],
            os.environ["BLOG_POSTGRES_DSN"],
            os.environ["BLOG_ES_URL"],
        )

    @property
    def kafka_nodes(self) -> int:
        """Nodes of the native stack's Kafka (its env says; else one per bootstrap address)."""
        return int(os.environ.get("KAFKA_NODES") or len(self.kafka.split(",")))


class Load:
    """Writes by many authors, through one publisher or several (picked at random per request);
    remembers what the publishers accepted."""

    def __init__(
        self,
        publisher: ServiceProcess | Sequence[ServiceProcess],
        tokens: dict[str, str],
        seed: int,
    ) -> None:
        self.publishers = [publisher] if isinstance(publisher, ServiceProcess) else [*publisher]
        self.tokens = tokens  # author id -> token
        self.rng = random.Random(seed)
        self.live: dict[str, list[str]] = {author: [] for author in tokens}
        self.accepted_posts: set[str] = set()
        self.accepted_version: dict[str, int] = {}

    async def one(self, http: httpx.AsyncClient, report: ChaosReport) -> bool:
        """One write; False when the publisher could not be reached (outcome unknown)."""
        author = self.rng.choice(list(self.tokens))
        headers = {"Authorization": f"Bearer {self.tokens[author]}"}
        mine = self.live[author]
        roll = self.rng.random()
        url = self.rng.choice(self.publishers).url
        report.requests_sent += 1
        posting = not mine or roll < 0.55
        try:
            if posting:
                body = {"title": f"Chaos {uuid.uuid4().hex[:8]}", "body": "x" * 200, "tags": ["c"]}
                response = await http.post(f"{url}/blogs", json=body, headers=headers)
                if response.status_code == 202:
                    blog_id = response.json()["id"]
                    self.accepted_posts.add(blog_id)
                    mine.append(blog_id)
            elif roll < 0.85:
                blog_id = self.rng.choice(mine)
                body = {"title": f"Edited {uuid.uuid4().hex[:8]}", "body": "y", "tags": ["e"]}
                response = await http.put(f"{url}/blogs/{blog_id}", json=body, headers=headers)
            else:
                blog_id = mine.pop(self.rng.randrange(len(mine)))
                response = await http.delete(f"{url}/blogs/{blog_id}", headers=headers)
        except httpx.TransportError as exc:
            report.requests_unknown += 1
            if len(report.problems) < 20:
                report.problems.append(f"unknown outcome ({url}): {exc!r}")
            return False
        if response.status_code == 202:
            report.requests_accepted += 1
            body_json = response.json()
            self.accepted_version[body_json["id"]] = max(
                body_json["version"], self.accepted_version.get(body_json["id"], 0)
            )
        else:
            report.requests_rejected += 1
            if response.status_code >= 500:
                report.server_errors += 1
                report.post_server_errors += posting
        return True


async def committed_everywhere(kafka: str, topic: str, groups: Sequence[str]) -> bool:
    """Every group has committed every record of `topic` written so far."""
    for group in groups:
        if await group_lag(kafka, group, topic) != 0:
            return False
    return True


def stack_command(action: str, component: str) -> None:
    subprocess.run([str(STACK), action, component], check=True, cwd=REPO)


async def chaos_run(
    writes: int, authors: int, concurrency: int, seed: int, kills_each: int = 1
) -> ChaosReport:
    stack = Stack.from_env()
    rng = random.Random(seed)
    brokers = (
        [f"kafka-{n}" for n in range(1, stack.kafka_nodes + 1)] if stack.kafka_nodes > 1 else []
    )
    report = ChaosReport(
        kills={"publisher": 0, "counter": 0, "indexer": 0},
        broker_kills=dict.fromkeys(brokers, 0),
    )
    topic, prefix = unique_name("chaos-"), unique_name("chaos-")
    # The services as their own roles; the run reads and seeds as the platform's admin role.
    database, database_url, service_urls = await create_service_database(
        stack.postgres_dsn, service_dsns(os.environ), "chaos_"
    )
    alias = f"{prefix}blogs"
    groups = [f"counter-{prefix}", f"indexer-{prefix}"]
    await create_topic(stack.kafka, topic, groups=groups)
    services = {
        "publisher": ServiceProcess(
            "chaos-publisher",
            "publisher",
            {
                "PUBLISHER_DATABASE_URL": service_urls["publisher"],
                "PUBLISHER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka,
                "PUBLISHER_TOPIC": topic,
                "PUBLISHER_STATUS_GROUPS": json.dumps(groups),
            },
            free_port(),
        ),
        "counter": ServiceProcess(
            "chaos-counter",
            "counter",
            {
                "COUNTER_DATABASE_URL": service_urls["counter"],
                "COUNTER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka,
                "COUNTER_TOPIC": topic,
                "COUNTER_GROUP_ID": groups[0],
            },
            free_port(),
        ),
        "indexer": ServiceProcess(
            "chaos-indexer",
            "indexer",
            {
                "INDEXER_ES_URL": stack.es_url,
                "INDEXER_KAFKA_BOOTSTRAP_SERVERS": stack.kafka,
                "INDEXER_TOPIC": topic,
                "INDEXER_GROUP_ID": groups[1],
                "INDEXER_INDEX_ALIAS": alias,
            },
            free_port(),
        ),
    }
    db = await asyncpg.connect(database_url)
    es = AsyncElasticsearch(stack.es_url, request_timeout=30)
    kafka_stopped = False
    try:
        await asyncio.gather(*(service.start() for service in services.values()))
        tokens: dict[str, str] = {}
        for n in range(authors):
            author_id, token = await create_author(db, f"chaos-{n}")
            tokens[str(author_id)] = token
        load = Load(services["publisher"], tokens, seed)
        remaining = writes
        load_done = asyncio.Event()

        async with httpx.AsyncClient(timeout=15.0) as http:
            # The fault plan: every service killed `kills_each` times, Kafka stopped once and, on
            # a cluster, every broker killed -9 once, in a random order at random moments; after
            # it, random kills until the load is done.
            plan = [*services] * kills_each + ["kafka", *brokers]
            rng.shuffle(plan)
            plan_done = asyncio.Event()

            async def worker() -> None:
                nonlocal remaining
                # At least `writes` requests, and the load lasts until the fault plan is done.
                while remaining > 0 or not plan_done.is_set():
                    remaining -= 1
                    if not await load.one(http, report):
                        # The publisher is down: wait until the chaos task has restarted it.
                        await wait_until(
                            _healthy(http, services["publisher"]),
                            timeout=120,
                            what="publisher back after a kill",
                        )

            async def chaos() -> None:
                nonlocal kafka_stopped
                while True:
                    # Random moments: this is the fault schedule, not synchronisation.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(load_done.wait(), timeout=rng.uniform(0.5, 2.5))
                    if plan:
                        victim = plan.pop()
                    elif load_done.is_set():
                        break
                    else:
                        plan_done.set()
                        victim = rng.choice(list(services))
                    if victim in report.broker_kills:
                        # A crashed broker; the others keep serving (3 copies, 2 in sync).
                        await asyncio.to_thread(stack_command, "kill", victim)
                        report.broker_kills[victim] += 1
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(load_done.wait(), timeout=rng.uniform(2, 8))
                        await asyncio.to_thread(stack_command, "start", victim)
                        continue
                    if victim == "kafka":
                        kafka_stopped = True
                        await asyncio.to_thread(stack_command, "stop", "kafka")
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(load_done.wait(), timeout=5)
                        await asyncio.to_thread(stack_command, "start", "kafka")
                        kafka_stopped = False
                        report.kafka_restarts += 1
                        continue
                    services[victim].kill()
                    await services[victim].wait_exit(10)
                    report.kills[victim] += 1
                    await services[victim].start(timeout=120)
                plan_done.set()

            chaos_task = asyncio.create_task(chaos())
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            load_done.set()
            await chaos_task
            for service in services.values():
                if not service.running:
                    await service.start(timeout=120)

            started = time.monotonic()
            # Catch up: the outbox drains, then both groups commit up to the end of the log.
            await wait_until(
                _outbox_drained(db), timeout=300, what="every outbox row sent", interval=0.5
            )
            await wait_until(
                lambda: committed_everywhere(stack.kafka, topic, groups),
                timeout=300,
                what="both groups caught up",
                interval=0.5,
            )
            await es.indices.refresh(index=alias)
            report.seconds_to_converge = round(time.monotonic() - started, 1)
            await check_invariants(db, es, alias, load, report)
    finally:
        if kafka_stopped or brokers:
            # Idempotent: starts whatever node a failure left stopped.
            await asyncio.to_thread(stack_command, "start", "kafka")
        for service in services.values():
            with contextlib.suppress(Exception):
                await service.terminate()
        await db.close()
        await es.close()
        with contextlib.suppress(Exception):
            await delete_indices(stack.es_url, prefix)
        await drop_database(stack.postgres_dsn, database)
        await delete_topic(stack.kafka, topic)
    return report


def _healthy(http: httpx.AsyncClient, service: ServiceProcess):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        response = await http.get(f"{service.url}/healthz")
        return response.status_code == httpx.codes.OK

    return check


def _outbox_drained(db: asyncpg.Connection):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        unsent: int = await db.fetchval(
            "SELECT count(*) FROM publisher.outbox WHERE sent_at IS NULL"
        )
        return unsent == 0

    return check


async def check_invariants(
    db: asyncpg.Connection, es: AsyncElasticsearch, alias: str, load: Load, report: ChaosReport
) -> None:
    blogs = {
        str(row["id"]): row
        for row in await db.fetch("SELECT id, author_id, version, deleted_at FROM publisher.blogs")
    }
    live = {blog_id: row for blog_id, row in blogs.items() if row["deleted_at"] is None}
    report.live_blogs = len(live)

    missing_posts = load.accepted_posts - set(blogs)
    report.missing += len(missing_posts)
    if missing_posts:
        report.problems.append(f"accepted POSTs not in the database: {sorted(missing_posts)[:5]}")
    stale = [b for b, v in load.accepted_version.items() if b in blogs and blogs[b]["version"] < v]
    report.missing += len(stale)
    if stale:
        report.problems.append(f"accepted versions newer than the database's: {stale[:5]}")
    doubled_publish = await db.fetch(
        "SELECT blog_id FROM publisher.outbox WHERE version = 1"
        " GROUP BY blog_id HAVING count(*) > 1"
    )
    report.duplicates += len(doubled_publish)

    expected_totals: dict[str, int] = {}
    for row in live.values():
        expected_totals[str(row["author_id"])] = expected_totals.get(str(row["author_id"]), 0) + 1
    counted = {
        str(r["author_id"]): r["total_blogs"]
        for r in await db.fetch("SELECT author_id, total_blogs FROM counter.author_stats")
    }
    for author in set(expected_totals) | set(counted):
        want, got = expected_totals.get(author, 0), counted.get(author, 0)
        if got > want:
            report.duplicates += got - want
            report.problems.append(f"author {author}: counted {got}, live {want}")
        elif got < want:
            report.missing += want - got
            report.problems.append(f"author {author}: counted {got}, live {want}")

    found = await es.search(
        index=alias,
        size=10_000,
        source=False,
        version=True,
        query={"bool": {"must_not": [{"term": {"deleted": True}}]}},
    )
    indexed = {hit["_id"]: hit["_version"] for hit in found["hits"]["hits"]}
    for blog_id, row in live.items():
        if blog_id not in indexed:
            report.missing += 1
            report.problems.append(f"live blog {blog_id} not indexed")
        elif indexed[blog_id] != row["version"]:
            report.missing += 1
            report.problems.append(
                f"blog {blog_id} indexed at v{indexed[blog_id]}, latest v{row['version']}"
            )
    for blog_id in set(indexed) - set(live):
        report.duplicates += 1
        report.problems.append(f"blog {blog_id} searchable but not live")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--authors", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--kills-each", type=int, default=3, help="minimum kill -9 of each service")
    args = parser.parse_args()
    report = asyncio.run(
        chaos_run(args.writes, args.authors, args.concurrency, args.seed, args.kills_each)
    )
    print(json.dumps(asdict(report), indent=2))
    print(
        f"accepted {report.requests_accepted} of {report.requests_sent} writes "
        f"(unknown {report.requests_unknown}, rejected {report.requests_rejected}); "
        f"kills {sum(report.kills.values())} {report.kills}; "
        f"broker kills {sum(report.broker_kills.values())} {report.broker_kills}; "
        f"kafka restarts {report.kafka_restarts}; live blogs {report.live_blogs}; "
        f"duplicates {report.duplicates}; missing {report.missing}; "
        f"converged in {report.seconds_to_converge}s (seed {args.seed})"
    )
    sys.exit(0 if report.duplicates == 0 and report.missing == 0 else 1)


if __name__ == "__main__":
    main()

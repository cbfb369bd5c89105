"""What every bench shares: the stack's addresses, a fresh database/topic/index prefix per run
(dropped afterwards), the services as processes, consumer-group lag, resident memory and
percentiles."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import statistics
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from blog_testkit import processes
from blog_testkit.plugin import (
    create_service_database,
    create_topic,
    delete_indices,
    delete_topic,
    drop_database,
    unique_name,
)
from blog_testkit.processes import ServiceProcess, free_port
from blog_testkit.stack import service_dsns
from publisher.auth import create_author

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PARTITIONS = 6  # the production default (services/publisher/topics.yaml)
SERVICE_LOG_LEVEL = "WARNING"  # per-request access logs would be measured too


@dataclass(frozen=True)
class StackAddresses:
    kafka: str
    postgres_dsn: str
    es_url: str

    @classmethod
    def from_env(cls) -> StackAddresses:
        try:
            return cls(
                os.environ["BLOG_KAFKA_BOOTSTRAP"],
                os.environ["BLOG_POSTGRES_DSN"],
                os.environ["BLOG_ES_URL"],
            )
        except KeyError as missing:
            raise SystemExit(
                f"{missing} is not set: start the stack (`make up`) and load .state/stack.env "
                "(`make bench` does both)"
            ) from None


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a latency that happened)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Latencies given in seconds, summarised in milliseconds."""
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 0.50) * 1000, 1),
        "p99_ms": round(percentile(values, 0.99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1) if values else float("nan"),
        "mean_ms": round(statistics.fmean(values) * 1000, 1) if values else float("nan"),
    }


def rss_mb(pid: int | None) -> float | None:
    """Resident memory (VmRSS) of a live process, in MB (10^6 bytes); None once it is gone."""
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) * 1024 / 1e6, 1)
    return None


@dataclass
class Workspace:
    """A fresh database, topic (+ each group's DLQ) and index-name prefix for one bench run, all
    removed on exit, so runs never see each other's data, offsets or documents."""

    stack: StackAddresses
    partitions: int = PARTITIONS
    database: str = ""  # created on entry
    database_url: str = ""  # the platform's admin role (seeding, reading totals)
    service_urls: dict[str, str] = field(default_factory=dict)  # each service's own role
    topic: str = field(default_factory=lambda: unique_name("bench-"))
    prefix: str = field(default_factory=lambda: unique_name("bench-"))
    services: list[ServiceProcess] = field(default_factory=list)

    @property
    def alias(self) -> str:
        return f"{self.prefix}blogs"

    def group(self, name: str) -> str:
        return f"{name}-{self.prefix}"

    async def __aenter__(self) -> Workspace:
        self.database, self.database_url, self.service_urls = await create_service_database(
            self.stack.postgres_dsn, service_dsns(os.environ), "bench_"
        )
        await create_topic(
            self.stack.kafka,
            self.topic,
            self.partitions,
            groups=[self.group("counter"), self.group("indexer")],
        )
        processes.artifacts_dir = RESULTS / "logs"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for service in self.services:
            with contextlib.suppress(Exception):
                await service.terminate()
        with contextlib.suppress(Exception):
            await delete_indices(self.stack.es_url, self.prefix)
        with contextlib.suppress(Exception):
            await drop_database(self.stack.postgres_dsn, self.database)
        await delete_topic(self.stack.kafka, self.topic)

    def _service(self, name: str, module: str, env: Mapping[str, str]) -> ServiceProcess:
        port = free_port()
        prefix = next(iter(env)).split("_", 1)[0]  # PUBLISHER_, COUNTER_, ...
        env = {**env, f"{prefix}_HOST": "127.0.0.1", f"{prefix}_PORT": str(port)}
        service = ServiceProcess(name, module, env, port)
        self.services.append(service)
        return service

    def publisher(self, *, status_groups: Sequence[str] = ()) -> ServiceProcess:
        return self._service(
            "publisher",
            "publisher",
            {
                "PUBLISHER_DATABASE_URL": self.service_urls["publisher"],
                "PUBLISHER_KAFKA_BOOTSTRAP_SERVERS": self.stack.kafka,
                "PUBLISHER_TOPIC": self.topic,
                "PUBLISHER_STATUS_GROUPS": json.dumps(list(status_groups)),
                "PUBLISHER_LOG_LEVEL": SERVICE_LOG_LEVEL,
            },
        )

    def counter(self, *, max_batch: int) -> ServiceProcess:
        return self._service(
            "counter",
            "counter",
            {
                "COUNTER_DATABASE_URL": self.service_urls["counter"],
                "COUNTER_KAFKA_BOOTSTRAP_SERVERS": self.stack.kafka,
                "COUNTER_TOPIC": self.topic,
                "COUNTER_GROUP_ID": self.group("counter"),
                "COUNTER_MAX_BATCH": str(max_batch),
                "COUNTER_LOG_LEVEL": SERVICE_LOG_LEVEL,
            },
        )

    def indexer(self, *, max_batch: int, es_url: str | None = None) -> ServiceProcess:
        return self._service(
            "indexer",
            "indexer",
            {
                "INDEXER_ES_URL": es_url or self.stack.es_url,
                "INDEXER_KAFKA_BOOTSTRAP_SERVERS": self.stack.kafka,
                "INDEXER_TOPIC": self.topic,
                "INDEXER_GROUP_ID": self.group("indexer"),
                "INDEXER_INDEX_ALIAS": self.alias,
                "INDEXER_MAX_BATCH": str(max_batch),
                "INDEXER_LOG_LEVEL": SERVICE_LOG_LEVEL,
            },
        )

    def baseline(self, *, es_url: str | None = None) -> ServiceProcess:
        return self._service(
            "baseline",
            "bench.baseline_app",
            {
                "BASELINE_DATABASE_URL": self.database_url,
                "BASELINE_ES_URL": es_url or self.stack.es_url,
                "BASELINE_INDEX_ALIAS": f"{self.prefix}baseline-blogs",
                "BASELINE_LOG_LEVEL": SERVICE_LOG_LEVEL,
            },
        )


@dataclass(frozen=True)
class Author:
    author_id: str
    token: str


async def create_authors(database_url: str, count: int, *, concurrency: int = 8) -> list[Author]:
    """`count` authors (with a bearer token each) in the publisher's schema, which must exist."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=concurrency)
    authors: list[Author] = []
    try:

        async def make(worker: int) -> None:
            async with pool.acquire() as conn:
                for n in range(worker, count, concurrency):
                    author_id, token = await create_author(conn, f"bench-{n}")
                    authors.append(Author(str(author_id), token))

        await asyncio.gather(*(make(w) for w in range(concurrency)))
    finally:
        await pool.close()
    return authors


async def end_offsets(kafka: str, topic: str, partitions: int) -> dict[int, int]:
    """partition -> offset of the next record to be written (the log end)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


class LagWatcher:
    """Reads a consumer group's committed offsets through the admin API (what an SRE sees)."""

    def __init__(self, kafka: str) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=kafka)

    async def __aenter__(self) -> LagWatcher:
        await self._admin.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._admin.close()

    async def lag(self, group: str, topic: str, ends: Mapping[int, int]) -> int:
        committed = await self._admin.list_consumer_group_offsets(group)
        done = {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == topic}
        return sum(max(0, end - max(0, done.get(p, 0))) for p, end in ends.items())

    async def wait_drained(
        self,
        group: str,
        topic: str,
        ends: Mapping[int, int],
        *,
        started: float,
        timeout_s: float,
        interval_s: float = 0.1,
    ) -> float:
        """Seconds from `started` (a time.monotonic()) until the group's lag is 0."""
        while True:
            if await self.lag(group, topic, ends) == 0:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"group {group} still lagging after {timeout_s:g}s")
            await asyncio.sleep(interval_s)  # the sampling period of the lag probe


def short_id() -> str:
    return uuid.uuid4().hex[:8]

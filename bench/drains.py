"""Runs 2 and 3: drain a pre-loaded backlog with the counter / the indexer, each beside its raw
ceiling (a bare aiokafka loop, Kafka's JVM consumer perf tool, a raw `async_bulk`).

Drain time = from the consumer's process spawn until the group's committed offsets reach the
log end (read through the admin API, as an SRE's lag probe would). The services and the bare
loop are timed the same way, start-up included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk

from bench.common import REPO, LagWatcher, Workspace, end_offsets, rss_mb, short_id
from bench.events import Backlog
from bench.profiling import cpu_share, sampled
from blog_testkit.plugin import create_database, drop_database
from counter.app import MIGRATIONS_DIR as COUNTER_MIGRATIONS
from counter.app import SCHEMA as COUNTER_SCHEMA
from indexer.index import ensure_index
from service_kit.migrations import apply_migrations

KAFKA_LIB = Path(os.environ.get("BENCH_KAFKA_LIB", REPO / ".state" / "kafka" / "lib"))
CONSUMER_PERF_CLASS = "org.apache.kafka.tools.ConsumerPerformance"
# Where the samples are summed up in each profile ("share of samples under ...").
COUNTER_FRAMES = ("getmany", "decode_event", "apply_changes", "commit", "plan_batch")
INDEXER_FRAMES = ("getmany", "decode_event", "bulk", "bulk_operations", "commit")


async def drain_service(
    ws: Workspace,
    name: str,
    ends: dict[int, int],
    *,
    max_batch: int,
    timeout_s: float,
    profile: bool,
) -> dict[str, Any]:
    service = (
        ws.counter(max_batch=max_batch) if name == "counter" else ws.indexer(max_batch=max_batch)
    )
    events = sum(ends.values())
    async with LagWatcher(ws.stack.kafka) as lag:
        started = time.monotonic()
        await service.start()
        needles = COUNTER_FRAMES if name == "counter" else INDEXER_FRAMES
        # CPU from the spawn, like the bare loop's: with a small backlog most of it is consumed
        # before the service answers its health check.
        async with sampled(
            service.pid, f"{name}-drain", profile, needles, spawned_at=started
        ) as profiled:
            drain_s = await lag.wait_drained(
                ws.group(name), ws.topic, ends, started=started, timeout_s=timeout_s
            )
    result: dict[str, Any] = {
        "events": events,
        "drain_s": round(drain_s, 2),
        "events_per_s": round(events / drain_s, 1),
        "rss_mb": rss_mb(service.pid),
        **profiled,
    }
    await service.terminate()
    return result


async def drain_bare(
    ws: Workspace,
    ends: dict[int, int],
    *,
    max_batch: int,
    decode: bool,
    timeout_s: float,
    overlap_commits: bool = False,
) -> dict[str, Any]:
    group = f"bare-{short_id()}-{ws.prefix}"
    flags = [
        *(["--decode"] if decode else []),
        *(["--overlap-commits"] if overlap_commits else []),
    ]
    return await _drain_module(
        ws,
        ends,
        group,
        "bench.bare_consumer",
        ["--max-batch", str(max_batch), *flags],
        timeout_s=timeout_s,
    )


async def drain_faststream(
    ws: Workspace, ends: dict[int, int], *, max_batch: int, timeout_s: float
) -> dict[str, Any]:
    """The peer (bench/faststream_counter.py) on a database of its own, checked like the
    counter: sum(total_blogs) after the drain."""
    database, database_url = await create_database(ws.stack.postgres_dsn, "bench_peer_")
    try:
        await apply_migrations(database_url, COUNTER_SCHEMA, COUNTER_MIGRATIONS)
        group = f"faststream-{short_id()}-{ws.prefix}"
        result = await _drain_module(
            ws,
            ends,
            group,
            "bench.faststream_counter",
            ["--max-batch", str(max_batch), "--database-url", database_url],
            timeout_s=timeout_s,
        )
        result["total_blogs"] = await counter_total(database_url)
    finally:
        await drop_database(ws.stack.postgres_dsn, database)
    return result


async def _drain_module(
    ws: Workspace,
    ends: dict[int, int],
    group: str,
    module: str,
    args: list[str],
    *,
    timeout_s: float,
) -> dict[str, Any]:
    """Spawn `python -m module --bootstrap --topic --group *args`, time it until the group's
    lag is 0, then stop it."""
    events = sum(ends.values())
    usage: dict[str, object] = {}
    async with LagWatcher(ws.stack.kafka) as lag:
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            "--bootstrap",
            ws.stack.kafka,
            "--topic",
            ws.topic,
            "--group",
            group,
            *args,
            cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            with cpu_share(process.pid, usage):
                drain_s = await lag.wait_drained(
                    group, ws.topic, ends, started=started, timeout_s=timeout_s
                )
            memory = rss_mb(process.pid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            await asyncio.wait_for(process.wait(), 30)
    return {
        "events": events,
        "drain_s": round(drain_s, 2),
        "events_per_s": round(events / drain_s, 1),
        "rss_mb": memory,
        **usage,
    }


async def kafka_consumer_perf(ws: Workspace, events: int) -> dict[str, Any]:
    """Kafka's own ConsumerPerformance on the same topic: the JVM client's ceiling here."""
    process = await asyncio.create_subprocess_exec(
        "java",
        "-Xmx512m",
        "-cp",
        f"{KAFKA_LIB}/*",
        CONSUMER_PERF_CLASS,
        "--bootstrap-server",
        ws.stack.kafka,
        "--topic",
        ws.topic,
        "--messages",
        str(events),
        "--group",
        f"perf-{short_id()}-{ws.prefix}",
        "--timeout",
        "30000",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"ConsumerPerformance failed: {err.decode()[-2000:]}")
    return parse_consumer_perf(out.decode())


def parse_consumer_perf(output: str) -> dict[str, Any]:
    """The tool prints a CSV header and one line of totals; keep the totals by name."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    header_at = next(i for i, line in enumerate(lines) if line.startswith("start.time"))
    names = [name.strip() for name in lines[header_at].split(",")]
    values = [value.strip() for value in lines[header_at + 1].split(",")]
    row = dict(zip(names, values, strict=True))
    return {
        "events": int(row["data.consumed.in.nMsg"]),
        "events_per_s": round(float(row["nMsg.sec"]), 1),
        "fetch_events_per_s": round(float(row["fetch.nMsg.sec"]), 1),
        "mb_per_s": round(float(row["MB.sec"]), 2),
        "rebalance_ms": int(row["rebalance.time.ms"]),
    }


def bulk_actions(index: str, backlog: Backlog) -> Iterator[dict[str, Any]]:
    """The documents the indexer writes for the backlog, one `index` action per event, in order
    (same ids, external versions and tombstones as indexer.documents)."""
    for envelope in backlog.events():
        payload = envelope["payload"]
        if payload["event_type"] == "BlogDeleted":
            source = {
                "blog_id": payload["blog_id"],
                "author_id": payload["author_id"],
                "version": payload["version"],
                "deleted": True,
            }
        else:
            source = {
                "blog_id": payload["blog_id"],
                "author_id": payload["author_id"],
                "title": payload["title"],
                "body": payload["body"],
                "tags": payload["tags"],
                "version": payload["version"],
                "published_at": payload["published_at"],
                "updated_at": payload.get("updated_at"),
                "deleted": False,
            }
        yield {
            "_op_type": "index",
            "_index": index,
            "_id": payload["blog_id"],
            "version": payload["version"],
            "version_type": "external",
            "_source": source,
        }


async def raw_bulk(ws: Workspace, backlog: Backlog, *, chunk: int) -> dict[str, Any]:
    """`async_bulk` of the backlog's documents straight into a fresh index of the same mapping,
    in chunks of the consumers' batch size, one request at a time like the indexer."""
    alias = f"{ws.prefix}raw-blogs"
    es = AsyncElasticsearch(ws.stack.es_url)
    try:
        await ensure_index(es, alias, f"{alias}-v1")
        # Generated before the clock starts: producing the events is not the reference's work.
        actions = list(bulk_actions(alias, backlog))
        started = time.monotonic()
        written, errors = await async_bulk(
            es,
            actions,
            chunk_size=chunk,
            refresh=False,
            raise_on_error=False,
        )
        elapsed = time.monotonic() - started
    finally:
        await es.close()
    failed = len(errors) if isinstance(errors, list) else int(errors)
    events = backlog.count
    return {
        "events": events,
        "written": written,
        "failed": failed,
        "drain_s": round(elapsed, 2),
        "events_per_s": round(events / elapsed, 1),
    }


async def rebuild(ws: Workspace, name: str, events: int, *, timeout_s: float) -> dict[str, Any]:
    """`python -m counter rebuild` / `python -m indexer rebuild` over the backlog (issue 13),
    timed like the drains: from the process spawn to its exit (start-up and swap included)."""
    if name == "counter":
        env = {
            "COUNTER_DATABASE_URL": ws.database_url,
            "COUNTER_KAFKA_BOOTSTRAP_SERVERS": ws.stack.kafka,
            "COUNTER_TOPIC": ws.topic,
            "COUNTER_GROUP_ID": ws.group("counter"),
        }
    else:
        env = {
            "INDEXER_ES_URL": ws.stack.es_url,
            "INDEXER_KAFKA_BOOTSTRAP_SERVERS": ws.stack.kafka,
            "INDEXER_TOPIC": ws.topic,
            "INDEXER_GROUP_ID": ws.group("indexer"),
            "INDEXER_INDEX_ALIAS": ws.alias,
        }
    usage: dict[str, object] = {}
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", name, "rebuild",
        cwd=REPO, env={**os.environ, **env}, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        with cpu_share(process.pid, usage):
            output, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    elapsed = time.monotonic() - started
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{name} rebuild failed ({process.returncode}): {text[-2000:]}")
    return {
        "events": events,
        "drain_s": round(elapsed, 2),
        "events_per_s": round(events / elapsed, 1),
        "output_tail": text.strip().splitlines()[-3:],
        **usage,
    }


async def counter_total(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        total: int | None = await conn.fetchval(
            "SELECT sum(total_blogs)::bigint FROM counter.author_stats"
        )
    finally:
        await conn.close()
    return total or 0


async def indexed_live(es_url: str, alias: str) -> int:
    es = AsyncElasticsearch(es_url)
    try:
        await es.indices.refresh(index=alias)
        found = await es.count(index=alias, query={"term": {"deleted": False}})
    finally:
        await es.close()
    count: int = found["count"]
    return count


__all__ = [
    "counter_total",
    "drain_bare",
    "drain_faststream",
    "drain_service",
    "end_offsets",
    "indexed_live",
    "kafka_consumer_perf",
    "raw_bulk",
    "rebuild",
]

"""`make bench` / `python -m bench.run [--size full|small] [--runs 1,2,3,4] [--profile]`.

Five measures, each beside its reference, in one run on one machine:
  1. POST /blogs of the publisher vs the do-it-now baseline (bench/baseline_app.py):
     throughput and p50/p99 at fixed closed-loop concurrency levels.
  2. Counter drain of a pre-loaded backlog vs a bare aiokafka loop (and Kafka's JVM perf tool).
  3. Indexer drain of the same backlog vs a raw `async_bulk` of the same documents.
  4. Freshness at a steady POST rate: 202 -> counted, 202 -> searchable, p50/p99.
  5. Elasticsearch slow (a proxy adding 200 ms): the baseline's POST p99 and errors against the
     publisher's, each beside its own figures with Elasticsearch at full speed.
  Also: CPU per accepted POST, CPU seconds per 1,000 events of each drain, and the resident
  memory of each service at the end of runs 2-4.
Prints one table and writes bench/results/bench.json. Figures are not asserted anywhere: a
target missed is reported (met? = no), not an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import profiling
from bench.common import RESULTS, StackAddresses, Workspace, create_authors, end_offsets, rss_mb
from bench.drains import (
    counter_total,
    drain_bare,
    drain_faststream,
    drain_service,
    indexed_live,
    kafka_consumer_perf,
    raw_bulk,
    rebuild,
)
from bench.events import Backlog, preload
from bench.loadgen import open_loop_posts, post_blogs
from bench.pipeline_latency import measure_freshness
from bench.profiling import sampled
from bench.slow_proxy import SlowProxy

ES_DELAY_S = 0.2  # run 5: what the proxy adds to every request to Elasticsearch


@dataclass(frozen=True)
class Size:
    concurrency: tuple[int, ...]
    load_s: float
    warmup_s: float
    load_authors: int
    events: int
    authors: int
    producers: int
    fresh_rate: float
    fresh_s: float
    drain_timeout_s: float
    # Run 5 (Elasticsearch slow): open-loop POST rate and duration of each phase.
    slow_rate: float = 100.0
    slow_s: float = 10.0
    # The services' default batch; the references read and write in batches of the same size.
    max_batch: int = 500
    # Run 1: processes of each app (the same on both sides), each client bound to one of them.
    # The publisher's replicas elect one relay leader, as when deployed.
    replicas: int = 1


SIZES = {
    "full": Size(
        concurrency=(1, 16, 64),
        load_s=15.0,
        warmup_s=2.0,
        load_authors=1000,
        events=1_000_000,
        authors=50_000,
        producers=2,
        fresh_rate=200.0,
        fresh_s=60.0,
        drain_timeout_s=1800.0,
        slow_rate=200.0,
        slow_s=30.0,
    ),
    # For working on a figure: the full shapes, a fifth of the volume.
    "medium": Size(
        concurrency=(1, 16, 64),
        load_s=8.0,
        warmup_s=1.0,
        load_authors=500,
        events=200_000,
        authors=20_000,
        producers=2,
        fresh_rate=200.0,
        fresh_s=20.0,
        drain_timeout_s=900.0,
    ),
    # The CI smoke: checks that every command works and produces its figure, not the figures.
    "small": Size(
        concurrency=(8,),
        load_s=2.0,
        warmup_s=0.5,
        load_authors=20,
        events=2_000,
        authors=200,
        producers=2,
        fresh_rate=20.0,
        fresh_s=5.0,
        drain_timeout_s=120.0,
        slow_rate=20.0,
        slow_s=3.0,
    ),
}


def log(message: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


# -- the runs --------------------------------------------------------------------------------


async def run_post(stack: StackAddresses, size: Size, profile: bool) -> dict[str, Any]:
    """Run 1: each app on its own fresh database (and index), one after the other."""
    results: dict[str, list[dict[str, Any]]] = {"publisher": [], "baseline": []}
    for name, expect in (("publisher", 202), ("baseline", 201)):
        async with Workspace(stack) as ws:
            apps = [
                ws.publisher() if name == "publisher" else ws.baseline()
                for _ in range(size.replicas)
            ]
            for app in apps:  # one at a time: the first one migrates the fresh database
                await app.start()
            tokens = [a.token for a in await create_authors(ws.database_url, size.load_authors)]
            for concurrency in size.concurrency:
                log(
                    f"run 1: {name} POST /blogs, {concurrency} concurrent, {size.load_s:g}s"
                    + (f", {size.replicas} processes" if size.replicas > 1 else "")
                )
                top = concurrency == max(size.concurrency)
                async with contextlib.AsyncExitStack() as sampling:
                    reports = [
                        await sampling.enter_async_context(
                            sampled(
                                app.pid,
                                f"{name}-post-c{concurrency}" + (f"-{n}" if n else ""),
                                profile and top,
                                ("publish_blog", "create", "author_for_token", "relay"),
                            )
                        )
                        for n, app in enumerate(apps)
                    ]
                    busy_before, loadgen_before = machine_busy_s(), time.process_time()
                    load = await post_blogs(
                        [app.url for app in apps],
                        tokens,
                        concurrency=concurrency,
                        duration_s=size.load_s,
                        warmup_s=size.warmup_s,
                        expect_status=expect,
                    )
                machine_busy = machine_busy_s() - busy_before
                # This process generated the load (and did nothing else meanwhile).
                loadgen_s = time.process_time() - loadgen_before
                # The CPU of every process of the app, over the accepted POSTs.
                cpu_s = [r.get("cpu_s") for r in reports]
                shares = [r.get("cpu_share") for r in reports]
                total_cpu_s = sum(c for c in cpu_s if isinstance(c, float))
                results[name].append(
                    {
                        **load.as_dict(),
                        "rss_mb": rss_mb(apps[0].pid),
                        "cpu_ms_per_post": (
                            ms_per_post(total_cpu_s, load.completed)
                            if all(isinstance(c, float) for c in cpu_s)
                            else None
                        ),
                        # Every process of the machine: the app, its database, Kafka or
                        # Elasticsearch, the load generator.
                        "machine_cpu_ms_per_post": ms_per_post(machine_busy, load.completed),
                        "loadgen_cpu_ms_per_post": ms_per_post(loadgen_s, load.completed),
                        **reports[0],  # the profile summary (first process only)
                        "cpu_s": round(total_cpu_s, 3),
                        "cpu_share": round(sum(s for s in shares if isinstance(s, float)), 2),
                    }
                )
            for app in apps:
                await app.terminate()
    return results


async def run_drains(stack: StackAddresses, size: Size, profile: bool) -> dict[str, Any]:
    """Runs 2 and 3 on one pre-loaded topic; each consumer reads it with its own group."""
    async with Workspace(stack) as ws:
        backlog = Backlog(size.events, seed=7, authors=size.authors, workers=size.producers)
        log(f"pre-loading {size.events:,} events ({size.authors:,} authors) into {ws.topic}")
        started = time.monotonic()
        stats = await preload(stack.kafka, ws.topic, backlog)
        preload_s = time.monotonic() - started
        ends = await end_offsets(stack.kafka, ws.topic, ws.partitions)
        if sum(ends.values()) != size.events:
            raise RuntimeError(f"topic holds {sum(ends.values())} events, {size.events} written")
        out: dict[str, Any] = {
            "backlog": {
                **asdict(stats),
                "live": stats.live,
                "partitions": len(ends),
                "preload_s": round(preload_s, 1),
            },
        }
        timeout = size.drain_timeout_s
        log("run 2: bare aiokafka loop")
        out["bare_loop"] = await drain_bare(
            ws, ends, max_batch=size.max_batch, decode=False, timeout_s=timeout
        )
        log("run 2: bare aiokafka loop, commits overlapped like BatchConsumer's")
        out["bare_loop_overlapped"] = await drain_bare(
            ws,
            ends,
            max_batch=size.max_batch,
            decode=False,
            timeout_s=timeout,
            overlap_commits=True,
        )
        log("run 2: bare aiokafka loop + decode_event")
        out["bare_loop_decode"] = await drain_bare(
            ws, ends, max_batch=size.max_batch, decode=True, timeout_s=timeout
        )
        log("run 2: Kafka ConsumerPerformance (JVM)")
        out["kafka_consumer_perf"] = await kafka_consumer_perf(ws, size.events)
        log("run 2: counter drain")
        out["counter"] = await drain_service(
            ws, "counter", ends, max_batch=size.max_batch, timeout_s=timeout, profile=profile
        )
        out["counter"]["check"] = {
            "expected_total_blogs": stats.live,
            "total_blogs": await counter_total(ws.database_url),
        }
        if importlib.util.find_spec("faststream") is None:
            log("run 2: FastStream peer skipped: not installed (uv sync --group bench)")
        else:
            log("run 2: the peer, FastStream's batch subscriber, the counter's handler logic")
            out["faststream"] = await drain_faststream(
                ws, ends, max_batch=size.max_batch, timeout_s=timeout
            )
            out["faststream"]["check"] = {
                "expected_total_blogs": stats.live,
                "total_blogs": out["faststream"].pop("total_blogs"),
            }
        log("run 3: raw async_bulk")
        out["raw_bulk"] = await raw_bulk(ws, backlog, chunk=size.max_batch)
        log("run 3: indexer drain")
        out["indexer"] = await drain_service(
            ws, "indexer", ends, max_batch=size.max_batch, timeout_s=timeout, profile=profile
        )
        out["indexer"]["check"] = {
            "expected_live_documents": stats.live,
            "live_documents": await indexed_live(stack.es_url, ws.alias),
        }
        # Issue 13: the same backlog rebuilt into the next index / shadow tables and swapped in
        # (the services are stopped: this measures the rebuild alone).
        log("run 3: index rebuild (python -m indexer rebuild)")
        out["index_rebuild"] = await rebuild(ws, "indexer", size.events, timeout_s=timeout)
        out["index_rebuild"]["check"] = {
            "expected_live_documents": stats.live,
            "live_documents": await indexed_live(stack.es_url, ws.alias),
        }
        log("run 2: counter rebuild (python -m counter rebuild)")
        out["counter_rebuild"] = await rebuild(ws, "counter", size.events, timeout_s=timeout)
        out["counter_rebuild"]["check"] = {
            "expected_total_blogs": stats.live,
            "total_blogs": await counter_total(ws.database_url),
        }
    return out


async def run_freshness(stack: StackAddresses, size: Size, profile: bool) -> dict[str, Any]:
    async with Workspace(stack) as ws:
        counter, indexer = (
            ws.counter(max_batch=size.max_batch),
            ws.indexer(max_batch=size.max_batch),
        )
        publisher = ws.publisher(status_groups=[ws.group("counter"), ws.group("indexer")])
        await asyncio.gather(publisher.start(), counter.start(), indexer.start())
        posts = round(size.fresh_rate * size.fresh_s)
        log(f"run 4: freshness, {posts} POSTs at {size.fresh_rate:g}/s")
        async with (
            sampled(counter.pid, "counter-freshness", profile) as counter_prof,
            sampled(indexer.pid, "indexer-freshness", profile) as indexer_prof,
        ):
            result = await measure_freshness(
                publisher_url=publisher.url,
                database_url=ws.database_url,
                es_url=stack.es_url,
                alias=ws.alias,
                posts=posts,
                rate=size.fresh_rate,
                probe_ms=20,
                deadline_s=size.fresh_s + 120,
            )
        result["rss_mb"] = {s.name: rss_mb(s.pid) for s in (publisher, counter, indexer)}
        result["profiles"] = {"counter": counter_prof, "indexer": indexer_prof}
    return result


async def run_slow_es(stack: StackAddresses, size: Size, profile: bool) -> dict[str, Any]:
    """Run 5, the design's thesis: Elasticsearch slow (a proxy adding 200 ms to every request).
    Each app gets the same open-loop POST rate twice, Elasticsearch at full speed then slow,
    through the same proxy: the baseline indexes inside the request, the publisher's pipeline
    (counter and indexer running, the indexer behind the proxy) must not notice."""
    del profile
    host, _, port = stack.es_url.removeprefix("http://").rstrip("/").partition(":")
    results: dict[str, Any] = {"delay_ms": ES_DELAY_S * 1000}
    for name, expect in (("publisher", 202), ("baseline", 201)):
        async with Workspace(stack) as ws, SlowProxy(host, int(port or 9200)) as proxy:
            if name == "publisher":
                app = ws.publisher(status_groups=[ws.group("counter"), ws.group("indexer")])
                consumers = [
                    ws.counter(max_batch=size.max_batch),
                    ws.indexer(max_batch=size.max_batch, es_url=proxy.url),
                ]
            else:
                app, consumers = ws.baseline(es_url=proxy.url), []
            await asyncio.gather(app.start(), *(c.start() for c in consumers))
            tokens = [a.token for a in await create_authors(ws.database_url, size.load_authors)]
            phases: dict[str, Any] = {}
            for phase, delay in (("normal", 0.0), ("slow", ES_DELAY_S)):
                proxy.delay_s = delay
                log(f"run 5: {name}, ES {phase}, {size.slow_rate:g} POST/s for {size.slow_s:g}s")
                phases[phase] = await open_loop_posts(
                    app.url,
                    tokens,
                    rate=size.slow_rate,
                    duration_s=size.slow_s,
                    expect_status=expect,
                )
            results[name] = phases
    return results


# -- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    measure: str
    ours: float | None
    reference: float | None
    unit: str
    target: str  # human-readable
    met: bool | None  # None: no target (context only)

    @classmethod
    def at_least(
        cls, measure: str, ours: float, reference: float | None, unit: str, factor: str
    ) -> Row:
        """A row whose target is `ours >= factor x reference` (`factor` as printed, e.g. "0.5")."""
        met = reference is not None and reference > 0 and ours / reference >= float(factor)
        return cls(measure, ours, reference, unit, f">= {factor}x", met)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.reference in (None, 0) or math.isnan(self.ours):
            return None
        assert self.reference is not None
        return self.ours / self.reference


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}" if abs(value) >= 1 or value == 0 else f"{value:.3f}"


def _ok(results: dict[str, Any], key: str) -> Any:
    return None if key in results.get("failed", {}) else results.get(key)


def build_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    post = _ok(results, "post")
    if post:
        for ours, ref in zip(post["publisher"], post["baseline"], strict=True):
            c = ours["concurrency"]
            rows.append(
                Row.at_least(
                    f"POST throughput, c={c}",
                    ours["throughput_per_s"],
                    ref["throughput_per_s"],
                    "req/s",
                    "3",
                )
            )
            rows.append(
                Row(
                    f"POST p50, c={c}",
                    ours["latency"]["p50_ms"],
                    ref["latency"]["p50_ms"],
                    "ms",
                    "-",
                    None,
                )
            )
            rows.append(
                Row(
                    f"CPU per accepted POST, c={c}",
                    ours.get("cpu_ms_per_post"),
                    ref.get("cpu_ms_per_post"),
                    "ms",
                    "<= 0.5 ms",
                    ours.get("cpu_ms_per_post") is not None and ours["cpu_ms_per_post"] <= 0.5,
                )
            )
            if ours.get("machine_cpu_ms_per_post") is not None:
                rows.append(
                    Row(
                        f"  machine CPU per accepted POST (all processes), c={c}",
                        ours["machine_cpu_ms_per_post"],
                        ref.get("machine_cpu_ms_per_post"),
                        "ms",
                        "-",
                        None,
                    )
                )
            if ours.get("loadgen_cpu_ms_per_post") is not None:
                rows.append(
                    Row(
                        f"  of which the load generator, c={c}",
                        ours["loadgen_cpu_ms_per_post"],
                        ref.get("loadgen_cpu_ms_per_post"),
                        "ms",
                        "-",
                        None,
                    )
                )
            p99, ref_p99 = ours["latency"]["p99_ms"], ref["latency"]["p99_ms"]
            rows.append(
                Row(
                    f"POST p99, c={c}",
                    p99,
                    ref_p99,
                    "ms",
                    "<= 0.2x",
                    bool(ref_p99) and p99 / ref_p99 <= 0.2,
                )
            )
    drains = _ok(results, "drains")
    if drains:
        bare = drains["bare_loop"]["events_per_s"]
        counter = drains["counter"]["events_per_s"]
        rows.append(
            Row.at_least("counter drain (vs bare aiokafka loop)", counter, bare, "events/s", "0.5")
        )
        if "bare_loop_overlapped" in drains:
            overlapped = drains["bare_loop_overlapped"]["events_per_s"]
            rows.append(
                Row(
                    "  counter (vs bare loop, commits overlapped too)",
                    counter,
                    overlapped,
                    "events/s",
                    "-",
                    None,
                )
            )
        rows.append(
            Row(
                "  bare loop + decode_event (vs bare loop)",
                drains["bare_loop_decode"]["events_per_s"],
                bare,
                "events/s",
                "-",
                None,
            )
        )
        rows.append(
            Row(
                "  counter (vs Kafka ConsumerPerformance, JVM)",
                counter,
                drains["kafka_consumer_perf"]["events_per_s"],
                "events/s",
                "-",
                None,
            )
        )
        peer = drains.get("faststream")
        if peer:
            rows.append(
                Row.at_least(
                    "counter drain (vs FastStream batch subscriber, same handler)",
                    counter,
                    peer["events_per_s"],
                    "events/s",
                    "1.0",
                )
            )
        for service, reference in (("counter", "bare_loop"), ("indexer", None)):
            rows.append(
                Row(
                    f"{service} CPU per 1,000 events" + (" (vs bare loop)" if reference else ""),
                    cpu_per_thousand(drains[service]),
                    cpu_per_thousand(drains[reference]) if reference else None,
                    "s",
                    "-",
                    None,
                )
            )
        indexer, raw = drains["indexer"]["events_per_s"], drains["raw_bulk"]["events_per_s"]
        rows.append(
            Row.at_least("indexer drain (vs raw async_bulk)", indexer, raw, "events/s", "0.8")
        )
        if "index_rebuild" in drains:
            rebuilt = drains["index_rebuild"]["events_per_s"]
            rows.append(
                Row.at_least("index rebuild (vs raw async_bulk)", rebuilt, raw, "events/s", "0.8")
            )
        if "counter_rebuild" in drains:
            rebuilt = drains["counter_rebuild"]["events_per_s"]
            rows.append(
                Row.at_least(
                    "counter rebuild (vs bare aiokafka loop)", rebuilt, bare, "events/s", "0.5"
                )
            )
    fresh = _ok(results, "freshness")
    if fresh:
        # Validity of the figures below: the open-loop sender must have kept the rate.
        sent, wanted = fresh["sent_rate_per_s"], fresh["rate_per_s"]
        rows.append(Row.at_least("freshness: POST rate sent", sent, wanted, "req/s", "0.95"))
        post_p99 = fresh["post_latency"]["p99_ms"]
        rows.append(
            Row(
                f"POST p99 at a steady {wanted:g}/s, consumers draining",
                post_p99,
                None,
                "ms",
                "<= 25 ms",
                not math.isnan(post_p99) and post_p99 <= 25,
            )
        )
        for key, label, limit in (
            ("post_to_counted", "counted", 1000.0),
            ("post_to_searchable", "searchable", 2000.0),
        ):
            rows.append(Row(f"202 -> {label} p50", fresh[key]["p50_ms"], None, "ms", "-", None))
            p99 = fresh[key]["p99_ms"]
            rows.append(
                Row(
                    f"202 -> {label} p99",
                    p99,
                    None,
                    "ms",
                    f"< {limit:,.0f} ms",
                    not math.isnan(p99) and p99 < limit,
                )
            )
    slow = _ok(results, "slow_es")
    if slow:
        delay = f"ES +{slow['delay_ms']:g} ms"
        pub, base = slow["publisher"], slow["baseline"]
        rows.append(
            Row(
                f"{delay}: baseline POST p99 (vs ES at full speed)",
                base["slow"]["latency"]["p99_ms"],
                base["normal"]["latency"]["p99_ms"],
                "ms",
                "-",
                None,
            )
        )
        rows.append(
            Row(
                f"{delay}: baseline POST errors (of {base['slow']['posts']})",
                base["slow"]["errors"],
                base["normal"]["errors"],
                "count",
                "-",
                None,
            )
        )
        ours, normal = pub["slow"]["latency"]["p99_ms"], pub["normal"]["latency"]["p99_ms"]
        rows.append(
            Row(
                f"{delay}: publisher POST p99 (vs ES at full speed)",
                ours,
                normal,
                "ms",
                "<= 1.1x",
                bool(normal) and ours / normal <= 1.1,
            )
        )
        rows.append(
            Row(
                f"{delay}: publisher POST errors (of {pub['slow']['posts']})",
                pub["slow"]["errors"],
                pub["normal"]["errors"],
                "count",
                "0",
                pub["slow"]["errors"] == 0,
            )
        )
    memory = results.get("memory")
    if memory:
        for service, mb in memory.items():
            rows.append(
                Row(
                    f"RSS {service} (end of runs 2-4)",
                    mb,
                    None,
                    "MB",
                    "< 150 MB",
                    None if mb is None else mb < 150,
                )
            )
    return rows


def cpu_per_thousand(drain: dict[str, Any]) -> float | None:
    """CPU seconds the process used per 1,000 events of the drain."""
    cpu_s, events = drain.get("cpu_s"), drain.get("events")
    return round(float(cpu_s) * 1000 / events, 3) if cpu_s is not None and events else None


def memory_at_end(results: dict[str, Any]) -> dict[str, float | None]:
    """The largest RSS each service had at the end of runs 2-4."""
    seen: dict[str, list[float]] = {"publisher": [], "counter": [], "indexer": []}
    drains, fresh = _ok(results, "drains") or {}, _ok(results, "freshness") or {}
    for service in ("counter", "indexer"):
        if drains.get(service, {}).get("rss_mb") is not None:
            seen[service].append(drains[service]["rss_mb"])
    for service, mb in (fresh.get("rss_mb") or {}).items():
        if mb is not None:
            seen[service].append(mb)
    return {service: max(values) if values else None for service, values in seen.items()}


def render(rows: list[Row]) -> str:
    header = ("measure", "ours", "reference", "ratio", "target", "met?")
    cells = [header] + [
        (
            f"{row.measure} [{row.unit}]",
            _fmt(row.ours),
            _fmt(row.reference),
            f"{row.ratio:.2f}x" if row.ratio is not None else "-",
            row.target,
            "-" if row.met is None else ("yes" if row.met else "NO"),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = [
        " | ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in cells
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def ms_per_post(cpu_s: float, posts: int) -> float | None:
    return round(cpu_s * 1000 / posts, 3) if posts else None


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores; /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def measure(size_name: str, size: Size, runs: set[int], profile: bool) -> dict[str, Any]:
    stack = StackAddresses.from_env()
    results: dict[str, Any] = {
        "size": size_name,
        "parameters": asdict(size),
        "started_at": datetime.now(UTC).isoformat(),
        "machine_at_start": machine(),
    }
    selected = (
        ("post", run_post, 1 in runs),
        ("drains", run_drains, bool(runs & {2, 3})),
        ("freshness", run_freshness, 4 in runs),
        ("slow_es", run_slow_es, 5 in runs),
    )
    for key, run, wanted in selected:
        if not wanted:
            continue
        try:
            results[key] = await run(stack, size, profile)
        except Exception as exc:
            # One run failing (say, the stack restarted under it) must not lose the others.
            log(f"{key} FAILED: {exc!r}")
            results.setdefault("failed", {})[key] = repr(exc)
    if runs & {2, 3, 4}:
        results["memory"] = memory_at_end(results)
    results["machine_at_end"] = machine()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument(
        "--runs",
        default="1,2,3,4,5",
        help="comma-separated subset of 1,2,3,4,5 (5: Elasticsearch slow; memory from runs 2-4)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the services with py-spy (bench/results/profiles/)",
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="--profile with native frames (C extensions, gc, syscalls); pauses each sample",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="run 1: processes of each app, the same on both sides (default 1)",
    )
    parser.add_argument(
        "--max-batch", type=int, help="consumer batch of the services and the references"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "bench.json")
    args = parser.parse_args()
    runs = {int(r) for r in args.runs.split(",") if r.strip()}
    size = SIZES[args.size]
    if args.max_batch:
        size = replace(size, max_batch=args.max_batch)
    if args.replicas > 1:
        size = replace(size, replicas=args.replicas)
    if args.profile_native:
        profiling.sample_native_frames()
    results = asyncio.run(measure(args.size, size, runs, args.profile or args.profile_native))
    rows = build_rows(results)
    results["table"] = [{**asdict(row), "ratio": row.ratio} for row in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(render(rows))
    print()
    post = _ok(results, "post")
    if post:
        errors = {name: sum(level["errors"] for level in levels) for name, levels in post.items()}
        print(f"POST answers other than 202/201 (or connection errors): {errors}")
    drains = _ok(results, "drains")
    if drains:
        counter, indexer = drains["counter"]["check"], drains["indexer"]["check"]
        peer = drains.get("faststream", {}).get("check")
        print(f"exactly-once checks: counter {counter}, indexer {indexer}, FastStream peer {peer}")
        print(
            "cpu_share during the drains: "
            + ", ".join(
                f"{k} {drains[k].get('cpu_share')}"
                for k in ("bare_loop", "counter", "faststream", "indexer")
                if k in drains
            )
        )
        for rebuilt in ("counter_rebuild", "index_rebuild"):
            if rebuilt in drains:
                print(f"{rebuilt} check: {drains[rebuilt]['check']}")
    fresh = _ok(results, "freshness")
    if fresh:
        print(
            f"freshness: sent at {fresh['sent_rate_per_s']}/s, {fresh['errors']} errors, "
            f"never counted {fresh['not_counted']}, never searchable {fresh['not_searchable']}"
        )
    print(f"written to {args.out}")
    if results.get("failed"):
        raise SystemExit(f"runs failed: {results['failed']}")


if __name__ == "__main__":
    main()

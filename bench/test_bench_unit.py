"""Pure parts of the bench: the generated backlog is valid and deterministic, the tool output
parser and the percentile are right."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time

from bench import run
from bench.common import percentile
from bench.drains import bulk_actions, parse_consumer_perf
from bench.events import Backlog, StreamStats, generate
from bench.profiling import cpu_seconds, cpu_share, top_self
from bench.slow_proxy import SlowProxy
from blog_events import BlogDeleted, BlogPublished, BlogUpdated, decode_event


def _encode(envelope: dict[str, object]) -> bytes:
    return json.dumps(envelope, separators=(",", ":")).encode()


def test_every_generated_event_parses_with_the_contract() -> None:
    stats = StreamStats()
    kinds = set()
    versions: dict[str, int] = {}
    for envelope in generate(3000, seed=1, authors=50, stats=stats):
        parsed = decode_event(_encode(envelope))
        kinds.add(type(parsed.payload))
        # Per blog, versions arrive in order with no gap: what the consumers must see.
        blog = str(parsed.payload.blog_id)
        assert parsed.payload.version == versions.get(blog, 0) + 1
        versions[blog] = parsed.payload.version
        assert parsed.key == blog
    assert kinds == {BlogPublished, BlogUpdated, BlogDeleted}
    assert stats.published + stats.updated + stats.deleted == 3000
    assert stats.live == stats.published - stats.deleted > 0


def test_the_backlog_is_deterministic_and_split_across_workers() -> None:
    first = list(Backlog(1001, seed=3, authors=20, workers=2).events())
    again = list(Backlog(1001, seed=3, authors=20, workers=2).events())
    assert first == again
    assert len(first) == 1001
    assert len({e["event_id"] for e in first}) == 1001


def test_bulk_actions_match_the_events() -> None:
    backlog = Backlog(200, seed=5, authors=10, workers=2)
    for action, envelope in zip(bulk_actions("ix", backlog), backlog.events(), strict=True):
        payload = envelope["payload"]
        assert action["_id"] == payload["blog_id"]
        assert action["version"] == payload["version"]
        assert action["_source"]["deleted"] == (payload["event_type"] == "BlogDeleted")


def test_consumer_perf_output_is_parsed() -> None:
    output = (
        "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, "
        "rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec\n"
        "2026-11-28 02:00:00:000, 2026-11-28 02:00:02:000, 1.0, 0.5, 2000, 1000.0, 300, 1700, "
        "0.58, 1176.47\n"
    )
    parsed = parse_consumer_perf(output)
    assert parsed["events"] == 2000
    assert parsed["events_per_s"] == 1000.0
    assert parsed["fetch_events_per_s"] == 1176.5
    assert parsed["rebalance_ms"] == 300


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


def test_top_self_sums_innermost_frames() -> None:
    collapsed = "main;a;b 3\nmain;a;c 1\nmain;x;b 4\n"
    assert top_self(collapsed) == [("b", 0.875), ("c", 0.125)]
    assert list(itertools.islice(top_self(""), 1)) == []


async def test_slow_proxy_delays_requests_and_forwards_every_byte() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    payload = bytes(range(256)) * 1000
    try:
        async with SlowProxy("127.0.0.1", port, delay_s=0.15) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            started = time.monotonic()
            writer.write(payload)
            await writer.drain()
            echoed = await reader.readexactly(len(payload))
            assert time.monotonic() - started >= 0.15
            assert echoed == payload
            proxy.delay_s = 0.0
            writer.write(b"again")
            assert await reader.readexactly(5) == b"again"
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_machine_busy_seconds_grow_with_work() -> None:
    before = run.machine_busy_s()
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # 50 ms of CPU: at least one clock tick of 10 ms
        pass
    assert run.machine_busy_s() >= before + 0.01


def test_cpu_share_counts_from_the_spawn_when_told() -> None:
    """A block that itself burns nothing still reports the CPU the process used before it, when
    counted from the spawn (the drain's service consumed part of the backlog during start)."""
    pid = os.getpid()
    already = cpu_seconds(pid)
    assert already is not None
    assert already > 0
    from_spawn: dict[str, object] = {}
    with cpu_share(pid, from_spawn, spawned_at=time.monotonic() - 1):
        pass
    assert isinstance(from_spawn["cpu_s"], float)
    assert from_spawn["cpu_s"] >= round(already, 3)

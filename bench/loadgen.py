"""Closed-loop HTTP load: `concurrency` clients, each POSTing a blog as soon as its previous
answer came back, for a warm-up and then a measured window.

aiohttp rather than httpx: its per-request CPU cost is several times lower, and the load
generator shares the machine with what it measures.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass

import aiohttp

from bench.common import summary

BODY = ("A blog about delegating work to consumer groups. " * 8).strip()


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    duration_s: float
    ok: int
    errors: int
    latency: dict[str, float]

    @property
    def throughput(self) -> float:
        return self.ok / self.duration_s

    def as_dict(self) -> dict[str, object]:
        return {
            "concurrency": self.concurrency,
            "duration_s": self.duration_s,
            "ok": self.ok,
            "errors": self.errors,
            "throughput_per_s": round(self.throughput, 1),
            "latency": self.latency,
        }


async def post_blogs(
    url: str,
    tokens: list[str],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    expect_status: int,
) -> LoadResult:
    """POST {url}/blogs closed-loop; the answers that arrive inside the measured window count."""
    bodies = [
        json.dumps({"title": f"Bench post {n}", "body": BODY, "tags": ["bench"]}).encode()
        for n in range(64)
    ]
    headers = [
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"} for token in tokens
    ]
    latencies: list[float] = []
    ok = errors = 0
    start = time.monotonic()
    window_start, window_end = start + warmup_s, start + warmup_s + duration_s
    counter = itertools.count()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:

        async def client() -> None:
            nonlocal ok, errors
            while (sent := time.monotonic()) < window_end:
                n = next(counter)
                try:
                    async with session.post(
                        f"{url}/blogs",
                        data=bodies[n % len(bodies)],
                        headers=headers[n % len(headers)],
                    ) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, OSError):
                    status = 0  # counted as an error, like any unexpected status
                done = time.monotonic()
                if window_start <= done <= window_end:
                    if status == expect_status:
                        ok += 1
                        latencies.append(done - sent)
                    else:
                        errors += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return LoadResult(concurrency, duration_s, ok, errors, summary(latencies))

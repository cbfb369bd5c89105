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
    # Every answer, warm-up included: the denominator of the server's CPU per request (its CPU is
    # read over the whole call).
    completed: int = 0

    @property
    def throughput(self) -> float:
        return self.ok / self.duration_s

    def as_dict(self) -> dict[str, object]:
        return {
            "concurrency": self.concurrency,
            "duration_s": self.duration_s,
            "ok": self.ok,
            "errors": self.errors,
            "completed": self.completed,
            "throughput_per_s": round(self.throughput, 1),
            "latency": self.latency,
        }


async def post_blogs(
    urls: str | list[str],
    tokens: list[str],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    expect_status: int,
) -> LoadResult:
    """POST {url}/blogs closed-loop; the answers that arrive inside the measured window count.
    With several URLs (processes of one app), client n posts to URL n modulo their number."""
    targets = [urls] if isinstance(urls, str) else urls
    bodies = [
        json.dumps({"title": f"Bench post {n}", "body": BODY, "tags": ["bench"]}).encode()
        for n in range(64)
    ]
    headers = [
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"} for token in tokens
    ]
    latencies: list[float] = []
    ok = errors = completed = 0
    start = time.monotonic()
    window_start, window_end = start + warmup_s, start + warmup_s + duration_s
    counter = itertools.count()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:

        async def client(url: str) -> None:
            nonlocal ok, errors, completed
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
                completed += status == expect_status
                if window_start <= done <= window_end:
                    if status == expect_status:
                        ok += 1
                        latencies.append(done - sent)
                    else:
                        errors += 1

        await asyncio.gather(*(client(targets[c % len(targets)]) for c in range(concurrency)))
    return LoadResult(concurrency, duration_s, ok, errors, summary(latencies), completed)


async def open_loop_posts(
    url: str,
    tokens: list[str],
    *,
    rate: float,
    duration_s: float,
    expect_status: int,
    timeout_s: float = 5.0,
) -> dict[str, object]:
    """POST {url}/blogs open-loop: arrivals at `rate`/s whatever the answers' times (users keep
    coming when the server is slow). An answer later than `timeout_s`, or other than
    `expect_status`, is an error."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(n: int) -> None:
            nonlocal errors
            sent = time.monotonic()
            try:
                async with session.post(
                    f"{url}/blogs",
                    data=json.dumps({"title": f"Slow {n}", "body": BODY, "tags": ["bench"]}),
                    headers={
                        "Authorization": f"Bearer {tokens[n % len(tokens)]}",
                        "Content-Type": "application/json",
                    },
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, OSError, TimeoutError):
                status = 0
            if status == expect_status:
                latencies.append(time.monotonic() - sent)
            else:
                errors += 1

        started = time.monotonic()
        tasks = []
        for n in range(round(rate * duration_s)):
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(n)))
        sending_s = time.monotonic() - started
        await asyncio.gather(*tasks)
    return {
        "rate_per_s": rate,
        "sent_rate_per_s": round(len(tasks) / sending_s, 1) if sending_s else None,
        "posts": len(tasks),
        "errors": errors,
        "latency": summary(latencies),
    }

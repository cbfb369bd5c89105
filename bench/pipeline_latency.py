"""POST latency and freshness of the pipeline: how long from a POST's 202 until the blog is counted
and until it is searchable.

    make bench-pipeline    # or: python bench/pipeline_latency.py --posts 300 --rate 30

Starts publisher, counter and indexer as processes against the running stack (`make up`), on a fresh
database, topic, consumer groups and index, posts `--posts` blogs at `--rate` per second (one per
author, so "counted" is the moment that author's total_blogs becomes 1), and watches with two light
batch probes (one SQL query, one Elasticsearch search every `--probe-ms`) rather than hammering the
services' HTTP APIs. Prints a table and writes bench/results/pipeline_latency.json.
`make bench` runs the same measurement as its run 4 (freshness).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: `python bench/pipeline_latency.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import contextlib
import json
import time
import uuid

import aiohttp
import asyncpg
from elasticsearch import AsyncElasticsearch

from bench.common import RESULTS, StackAddresses, Workspace, create_authors, summary


async def measure_freshness(
    *,
    publisher_url: str,
    database_url: str,
    es_url: str,
    alias: str,
    posts: int,
    rate: float,
    probe_ms: int,
    deadline_s: float,
) -> dict[str, object]:
    """Post `posts` blogs (one per new author) open-loop at `rate`/s to a running pipeline and
    time each from its 202 to counted (author_stats) and to searchable (an `ids` search)."""
    authors = await create_authors(database_url, posts)
    es = AsyncElasticsearch(es_url)
    db = await asyncpg.connect(database_url)
    try:
        accepted_at: dict[str, float] = {}  # blog id -> monotonic time of the 202
        author_of: dict[str, str] = {}
        pending_count: set[str] = set()
        pending_search: set[str] = set()
        post_latency: list[float] = []
        counted: dict[str, float] = {}
        searchable: dict[str, float] = {}
        errors = 0

        # aiohttp: several times less CPU per request than httpx, so the sender keeps the rate
        # on a busy machine (`sent_rate_per_s` in the result says whether it did).
        connector = aiohttp.TCPConnector(limit=256)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

            async def post(author_id: str, token: str) -> None:
                nonlocal errors
                word = f"w{uuid.uuid4().hex[:12]}"
                started = time.monotonic()
                try:
                    async with http.post(
                        f"{publisher_url}/blogs",
                        json={
                            "title": f"Bench {word}",
                            "body": "Freshness probe.",
                            "tags": ["bench"],
                        },
                        headers={"Authorization": f"Bearer {token}"},
                    ) as response:
                        body = await response.json() if response.status == 202 else None
                except (aiohttp.ClientError, OSError):
                    body = None
                done = time.monotonic()
                if body is None:
                    errors += 1
                    return
                post_latency.append(done - started)
                blog_id = body["id"]
                accepted_at[blog_id] = done
                author_of[blog_id] = author_id
                pending_count.add(blog_id)
                pending_search.add(blog_id)

            async def probe() -> None:
                end = time.monotonic() + deadline_s
                while time.monotonic() < end:
                    now = time.monotonic()
                    if pending_count:
                        batch = list(pending_count)
                        rows = await db.fetch(
                            "SELECT author_id FROM counter.author_stats"
                            " WHERE author_id = ANY($1::uuid[]) AND total_blogs >= 1",
                            [author_of[b] for b in batch],
                        )
                        done_authors = {str(r["author_id"]) for r in rows}
                        for blog_id in batch:
                            if author_of[blog_id] in done_authors:
                                counted[blog_id] = now
                                pending_count.discard(blog_id)
                    if pending_search:
                        batch = list(pending_search)
                        with contextlib.suppress(Exception):  # the index may not exist yet
                            found = await es.search(
                                index=alias,
                                size=len(batch),
                                source=False,
                                query={"ids": {"values": batch}},
                            )
                            for hit in found["hits"]["hits"]:
                                searchable.setdefault(hit["_id"], now)
                                pending_search.discard(hit["_id"])
                    if (
                        len(accepted_at) + errors == posts
                        and not pending_count
                        and not pending_search
                    ):
                        return
                    await asyncio.sleep(probe_ms / 1000)  # the probe's sampling period

            prober = asyncio.create_task(probe())
            started = time.monotonic()
            tasks = []
            for n, author in enumerate(authors):
                # Open-loop arrivals at a fixed rate, independent of response times.
                await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
                tasks.append(asyncio.create_task(post(author.author_id, author.token)))
            sending_s = time.monotonic() - started  # when the last POST went out
            await asyncio.gather(*tasks)
            await prober

        to_counted = [counted[b] - accepted_at[b] for b in counted]
        to_searchable = [searchable[b] - accepted_at[b] for b in searchable]
        return {
            "posts": posts,
            "rate_per_s": rate,
            "sent_rate_per_s": round(posts / sending_s, 1),
            "probe_ms": probe_ms,
            "errors": errors,
            "post_latency": summary(post_latency),
            "post_to_counted": summary(to_counted),
            "post_to_searchable": summary(to_searchable),
            "not_counted": len(accepted_at) - len(counted),
            "not_searchable": len(accepted_at) - len(searchable),
        }
    finally:
        await db.close()
        await es.close()


async def run(posts: int, rate: float, probe_ms: int, deadline_s: float) -> dict[str, object]:
    stack = StackAddresses.from_env()
    async with Workspace(stack) as ws:
        counter, indexer = ws.counter(max_batch=500), ws.indexer(max_batch=500)
        publisher = ws.publisher(status_groups=[ws.group("counter"), ws.group("indexer")])
        await asyncio.gather(publisher.start(), counter.start(), indexer.start())
        return await measure_freshness(
            publisher_url=publisher.url,
            database_url=ws.database_url,
            es_url=stack.es_url,
            alias=ws.alias,
            posts=posts,
            rate=rate,
            probe_ms=probe_ms,
            deadline_s=deadline_s,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--rate", type=float, default=30.0, help="POSTs per second")
    parser.add_argument("--probe-ms", type=int, default=20)
    parser.add_argument("--deadline-s", type=float, default=120.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.posts, args.rate, args.probe_ms, args.deadline_s))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pipeline_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.posts} POSTs at {args.rate:g}/s, probes every {args.probe_ms} ms, "
        f"errors {result['errors']}, never counted {result['not_counted']}, "
        f"never searchable {result['not_searchable']}"
    )
    print(f"{'measure':<22}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'n':>6}")
    for key in ("post_latency", "post_to_counted", "post_to_searchable"):
        row = result[key]
        assert isinstance(row, dict)
        print(f"{key:<22}{row['p50_ms']:>10}{row['p99_ms']:>10}{row['max_ms']:>10}{row['n']:>6}")


if __name__ == "__main__":
    main()

"""A deterministic backlog of valid `blog_events` envelopes, and its fast pre-load into a topic.

The stream is a function of (count, seed, authors): the producers and the raw-bulk reference
regenerate exactly the same events. Mostly BlogPublished; updates and deletes hit recently
published blogs (edits come soon after publishing), so per-blog state stays small.

Envelopes are built as dicts and serialised with `json`, not through the pydantic models: 1M
model instances would make the pre-load the slowest part of the bench. The unit test checks that
every kind of generated event parses with `blog_events.decode_event`.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from typing import Any

from aiokafka import AIOKafkaProducer

PUBLISH_SHARE = 0.85
UPDATE_SHARE = 0.10  # the rest are deletes
RECENT_WINDOW = 5_000  # blogs an update/delete may hit
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
# A small vocabulary is enough for searchable, realistically tokenised text.
WORDS = [
    f"{stem}{suffix}"
    for stem in (
        "kafka",
        "event",
        "stream",
        "python",
        "search",
        "index",
        "count",
        "blog",
        "async",
        "queue",
        "log",
        "shard",
        "batch",
        "lag",
        "offset",
        "write",
        "read",
        "cache",
        "replay",
        "broker",
    )
    for suffix in ("", "s", "ing", "ed", "er", "ly", "ness", "able", "ful", "ism")
]
TAGS = ["kafka", "python", "elasticsearch", "postgres", "design", "ops", "bench", "async"]


@dataclass
class StreamStats:
    published: int = 0
    updated: int = 0
    deleted: int = 0

    @property
    def live(self) -> int:
        return self.published - self.deleted

    def add(self, other: StreamStats) -> None:
        self.published += other.published
        self.updated += other.updated
        self.deleted += other.deleted


@dataclass
class _Blog:
    blog_id: str
    author_id: str
    version: int
    title: str
    body: str
    tags: list[str]
    published_at: str


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def generate(
    count: int, seed: int, authors: int, stats: StreamStats | None = None
) -> Iterator[dict[str, Any]]:
    """`count` envelopes (as JSON-ready dicts), in the order they go on the wire."""
    rng = random.Random(seed)
    author_rng = random.Random(-authors)  # the same authors in every worker's stream
    author_ids = [_uuid(author_rng) for _ in range(authors)]
    recent: list[_Blog] = []
    stats = stats if stats is not None else StreamStats()
    for n in range(count):
        at = (BASE_TIME + timedelta(milliseconds=seed * 10_000_000 + n)).isoformat()
        roll = rng.random()
        payload: dict[str, Any]
        if roll < PUBLISH_SHARE or not recent:
            blog = _Blog(
                blog_id=_uuid(rng),
                author_id=author_ids[rng.randrange(authors)],
                version=1,
                title=" ".join(rng.choices(WORDS, k=rng.randint(3, 8))),
                body=" ".join(rng.choices(WORDS, k=rng.randint(40, 120))),
                tags=sorted(set(rng.choices(TAGS, k=rng.randint(0, 3)))),
                published_at=at,
            )
            recent.append(blog)
            if len(recent) > RECENT_WINDOW:
                recent.pop(0)
            stats.published += 1
            payload = {
                "event_type": "BlogPublished",
                "blog_id": blog.blog_id,
                "author_id": blog.author_id,
                "version": 1,
                "title": blog.title,
                "body": blog.body,
                "tags": blog.tags,
                "published_at": at,
            }
        elif roll < PUBLISH_SHARE + UPDATE_SHARE:
            blog = recent[rng.randrange(len(recent))]
            blog.version += 1
            blog.title = " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))
            stats.updated += 1
            payload = {
                "event_type": "BlogUpdated",
                "blog_id": blog.blog_id,
                "author_id": blog.author_id,
                "version": blog.version,
                "title": blog.title,
                "body": blog.body,
                "tags": blog.tags,
                "published_at": blog.published_at,
                "updated_at": at,
            }
        else:
            blog = recent.pop(rng.randrange(len(recent)))
            stats.deleted += 1
            payload = {
                "event_type": "BlogDeleted",
                "blog_id": blog.blog_id,
                "author_id": blog.author_id,
                "version": blog.version + 1,
                "deleted_at": at,
            }
        yield {
            "event_id": _uuid(rng),
            "schema_version": 1,
            "occurred_at": at,
            "key": payload["blog_id"],
            "payload": payload,
        }


def worker_seeds(seed: int, workers: int) -> list[int]:
    return [seed * 1000 + w for w in range(workers)]


def split(count: int, workers: int) -> list[int]:
    return [count // workers + (1 if w < count % workers else 0) for w in range(workers)]


@dataclass(frozen=True)
class Backlog:
    """What to pre-load: `count` events of `authors` authors, written by `workers` producers."""

    count: int
    seed: int
    authors: int
    workers: int

    def events(self, stats: StreamStats | None = None) -> Iterator[dict[str, Any]]:
        """The whole backlog, worker stream after worker stream (per-blog order is kept)."""
        parts = zip(
            split(self.count, self.workers), worker_seeds(self.seed, self.workers), strict=True
        )
        for part, worker_seed in parts:
            yield from generate(part, worker_seed, self.authors, stats)


async def _produce(kafka: str, topic: str, count: int, seed: int, authors: int) -> StreamStats:
    # Big batches and a little linger: the pre-load is setup, not a measured figure.
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka,
        acks=1,
        linger_ms=50,
        max_batch_size=1 << 20,
        max_request_size=8 << 20,
    )
    await producer.start()
    stats = StreamStats()
    pending: list[asyncio.Future[Any]] = []
    try:
        for envelope in generate(count, seed, authors, stats):
            value = json.dumps(envelope, separators=(",", ":")).encode()
            pending.append(await producer.send(topic, value, key=envelope["key"].encode()))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return stats


def _produce_in_process(kafka: str, topic: str, count: int, seed: int, authors: int) -> StreamStats:
    return asyncio.run(_produce(kafka, topic, count, seed, authors))


async def preload(kafka: str, topic: str, backlog: Backlog) -> StreamStats:
    """Write the backlog with one producer process per worker at once; what was written."""
    loop = asyncio.get_running_loop()
    parts = zip(
        split(backlog.count, backlog.workers),
        worker_seeds(backlog.seed, backlog.workers),
        strict=True,
    )
    with ProcessPoolExecutor(backlog.workers, mp_context=get_context("spawn")) as pool:
        written = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool, _produce_in_process, kafka, topic, part, worker_seed, backlog.authors
                )
                for part, worker_seed in parts
            )
        )
    total = StreamStats()
    for part_stats in written:
        total.add(part_stats)
    return total

"""`python -m counter verify`: fold `blog-events` from the beginning into the state the counter
must hold (each blog's newest version, live or not, and per author the number of live blogs) and
compare it with `counter.blog_state` and `counter.author_stats`. Exit 0 with a one-line summary
when they agree, 1 with counts and the first differences otherwise.

Blogs in flight (their newest record not yet committed by the live group `counter`) are read again
until the live group has applied them, for at most `--settle-timeout` seconds; authors with a blog
in flight are compared once it has settled."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TextIO

import asyncpg

from blog_events.fast import FastEnvelope
from counter.app import EVENT_DECODER
from counter.counting import change_of
from counter.repository import LIVE_TABLES, Tables, read_all
from counter.settings import Settings
from service_kit.replay import Difference, Verification, offsets_text, verify_against_log

SHOWN_DIFFERENCES = 10

BlogState = tuple[uuid.UUID, bool]  # (author, live); the version is compared beside it


@dataclass(frozen=True)
class Snapshot:
    """One consistent read of both tables (REPEATABLE READ: the counter writes both in one
    transaction)."""

    blogs: dict[uuid.UUID, tuple[int, BlogState]]
    totals: dict[uuid.UUID, int]


async def read_tables(database_url: str, tables: Tables = LIVE_TABLES) -> Snapshot:
    connection = await asyncpg.connect(database_url)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            rows, totals = await read_all(connection, tables)
    finally:
        await connection.close()
    return Snapshot(
        {r["blog_id"]: (r["version"], (r["author_id"], r["live"])) for r in rows},
        {r["author_id"]: r["total_blogs"] for r in totals},
    )


def entry(envelope: FastEnvelope) -> tuple[uuid.UUID, int, BlogState]:
    change = change_of(envelope)
    return change.blog_id, change.version, (change.author_id, change.live)


def describe(found: tuple[int, BlogState] | None) -> str:
    if found is None:
        return "no row"
    version, (author, live) = found
    return f"v{version} {'live' if live else 'deleted'}, author {author}"


def author_differences(
    result: Verification[uuid.UUID, BlogState, Snapshot],
) -> list[Difference]:
    """Each author's total against the live blogs of the log, for authors with no blog in flight."""
    expected: Counter[uuid.UUID] = Counter(
        newest.state[0] for newest in result.fold.newest.values() if newest.state[1]
    )
    newest, found = result.fold.newest, result.snapshot.blogs
    unsettled = {newest[b].state[0] for b in result.in_flight if b in newest}
    unsettled |= {found[b][1][0] for b in result.in_flight if b in found}
    differences = []
    for author in sorted({*expected, *result.snapshot.totals} - unsettled, key=str):
        want, have = expected.get(author, 0), result.snapshot.totals.get(author, 0)
        if want != have:
            differences.append(
                Difference(f"author {author}", f"total_blogs {want}", f"total_blogs {have}")
            )
    return differences


async def run_verify(settings: Settings, settle_timeout_s: float, out: TextIO) -> int:
    def found_of(snapshot: Snapshot) -> dict[uuid.UUID, tuple[int, BlogState]]:
        return snapshot.blogs

    result = await verify_against_log(
        bootstrap=settings.kafka_bootstrap_servers,
        topic=settings.topic,
        live_group=settings.group_id,
        decoder=EVENT_DECODER,
        entry=entry,
        read_model=lambda: read_tables(settings.database_url),
        found_of=found_of,
        describe=describe,
        settle_timeout_s=settle_timeout_s,
    )
    blog_differences = [
        Difference(f"blog {d.key}", d.expected, d.found) for d in result.differences
    ]
    differences = blog_differences + author_differences(result)
    live = sum(1 for newest in result.fold.newest.values() if newest.state[1])
    authors = len({newest.state[0] for newest in result.fold.newest.values() if newest.state[1]})
    counts = (
        f"{len(result.fold.newest):,} blogs ({live:,} live, {authors:,} author(s) with live blogs) "
        f"from {result.fold.records:,} records of {settings.topic} up to offsets "
        f"{offsets_text(result.until)}; {result.fold.undecodable:,} undecodable, "
        f"{len(result.in_flight):,} still in flight (not compared)"
    )
    if not differences:
        print(f"counter verify: OK: {counts}", file=out)
        return 0
    print(
        f"counter verify: {len(blog_differences):,} blog and "
        f"{len(differences) - len(blog_differences):,} author total difference(s) against "
        f"{counts}; the first {min(SHOWN_DIFFERENCES, len(differences))}:",
        file=out,
    )
    for difference in differences[:SHOWN_DIFFERENCES]:
        print(difference.line(), file=out)
    return 1


def main_verify(settings: Settings, settle_timeout_s: float) -> int:
    return asyncio.run(run_verify(settings, settle_timeout_s, sys.stdout))

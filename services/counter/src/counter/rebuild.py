"""`python -m counter rebuild`: the counts rebuilt from `blog-events` into shadow tables while the
live counter keeps running, then swapped in, in one transaction, without losing an update made
meanwhile. `--rollback` swaps the previous tables back (brought up to date first), `--prune` drops
them.

How no update is lost: the rebuild reads the log from the beginning under its own group
(`<group>-rebuild`, positions kept in `counter.rebuild_positions` in the same transaction as the
rows they produced, so a killed rebuild resumes where it stopped). While catching up it writes
only the blog rows (one version-guarded upsert per batch) and counts the author totals from them
once at the end, in one statement. Once it is within `--swap-lag`
offsets of the end, one transaction takes ACCESS EXCLUSIVE locks on the live tables (the live
counter's next batch waits; reads of /authors/.../stats wait the few milliseconds of the swap),
reads the end offsets (everything the live counter has applied is below them), applies the rest
of the log up to them to the shadow tables, and renames: live -> `*_previous`, shadow -> live. The
live counter then goes on from its own committed offsets, into the new tables: what it applies
again is at a version the new tables already hold, a no-op (the version guard).

The previous tables are complete up to what the live group had committed at the swap (kept in
`counter.rebuild_positions` as `previous`): `--rollback` applies the log from there to them, then
swaps them back the same way (the current tables become the previous ones)."""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TextIO

import asyncpg

from counter import repository
from counter.app import EVENT_DECODER, migrate
from counter.counting import BlogChange, fold_newest_per_blog
from counter.repository import LIVE_TABLES, DbConnection, Tables
from counter.settings import Settings
from service_kit.consumer import decode_in_slices
from service_kit.consumer.records import Record
from service_kit.replay import (
    LogReader,
    Offsets,
    Progress,
    committed_offsets,
    forget_group,
    offsets_text,
    read_ahead,
    remaining,
)

log = logging.getLogger(__name__)

SHADOW_TABLES = Tables("counter.blog_state_rebuild", "counter.author_stats_rebuild")
PREVIOUS_TABLES = Tables("counter.blog_state_previous", "counter.author_stats_previous")
SWAP_TABLES = Tables("counter.blog_state_swap", "counter.author_stats_swap")
REBUILD, PREVIOUS = "rebuild", "previous"  # the two sets of positions kept
EXIT_NOTHING_TO_DO = 2
BATCH = 2000  # records per transaction while catching up

# DDL only, on names fixed here (never input): identifiers cannot be bind parameters.
_POSITIONS_TABLE = """
CREATE TABLE IF NOT EXISTS counter.rebuild_positions (
    tables      text   NOT NULL,
    partition   int    NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (tables, partition)
)
"""
_SAVE_POSITIONS = """
INSERT INTO counter.rebuild_positions (tables, partition, next_offset)
SELECT $1, p, o FROM unnest($2::int[], $3::bigint[]) AS t(p, o)
ON CONFLICT (tables, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset
"""
_LOAD_POSITIONS = "SELECT partition, next_offset FROM counter.rebuild_positions WHERE tables = $1"
_FORGET_POSITIONS = "DELETE FROM counter.rebuild_positions WHERE tables = $1"
_TABLE_EXISTS = "SELECT to_regclass($1) IS NOT NULL"
_PRIMARY_KEY = (
    "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'p'"
)


@dataclass(frozen=True)
class Outcome:
    applied_records: int
    swap_records: int
    blogs: int


def _short(qualified: str) -> str:
    return qualified.split(".", 1)[1]


async def _exists(connection: DbConnection, tables: Tables) -> bool:
    return bool(await connection.fetchval(_TABLE_EXISTS, tables.blog_state))


async def _rename(connection: DbConnection, source: Tables, target: Tables) -> None:
    """Both tables and their primary keys (named after the table, so the next shadow copy's do
    not collide)."""
    pairs = [
        (source.blog_state, target.blog_state),
        (source.author_stats, target.author_stats),
    ]
    for old, new in pairs:
        key = await connection.fetchval(_PRIMARY_KEY, old)
        await connection.execute(f"ALTER TABLE {old} RENAME TO {_short(new)}")
        if key is not None:
            await connection.execute(
                f'ALTER TABLE {new} RENAME CONSTRAINT "{key}" TO {_short(new)}_pkey'
            )


async def _drop(connection: DbConnection, tables: Tables) -> None:
    await connection.execute(f"DROP TABLE IF EXISTS {tables.blog_state}, {tables.author_stats}")


async def _load_positions(connection: DbConnection, which: str) -> Offsets:
    rows = await connection.fetch(_LOAD_POSITIONS, which)
    return {row["partition"]: row["next_offset"] for row in rows}


async def _save_positions(connection: DbConnection, which: str, positions: Offsets) -> None:
    await connection.execute(
        _SAVE_POSITIONS, which, list(positions), [positions[p] for p in positions]
    )


def _advance(positions: Offsets, records: list[Record]) -> None:
    for record in records:
        positions[record.partition] = max(positions.get(record.partition, 0), record.offset + 1)


@dataclass(frozen=True)
class Prepared:
    """One batch decoded and folded (undecodable records skipped: the live group dead-letters
    them), with the positions past it."""

    records: int
    newest: dict[uuid.UUID, BlogChange]
    next_offsets: Offsets


async def _prepare_batch(records: list[Record]) -> Prepared:
    # Decoded in slices with a yield between them (as the live consumer reads ahead): read
    # ahead, one 2,000-record block would hold the event loop while the database has answered.
    events, _undecodable = await decode_in_slices(records, EVENT_DECODER)
    next_offsets: Offsets = {}
    _advance(next_offsets, records)
    return Prepared(len(records), fold_newest_per_blog(e.envelope for e in events), next_offsets)


async def _prepared(reader: LogReader, until: Mapping[int, int]) -> AsyncIterator[Prepared]:
    async for records in reader.batches(until, max_records=BATCH):
        yield await _prepare_batch(records)


async def _write(
    connection: DbConnection,
    tables: Tables,
    which: str,
    positions: Offsets,
    batch: Prepared,
    *,
    totals: bool = True,
) -> None:
    """The batch's newest version per blog and the positions after it, in the caller's
    transaction. `totals=False` (catching up): blog rows only, recounted before the swap."""
    if batch.newest and totals:
        await repository.apply_in_transaction(connection, batch.newest, tables)
    elif batch.newest:
        await repository.upsert_blog_states(connection, batch.newest, tables)
    positions.update(batch.next_offsets)
    await _save_positions(connection, which, positions)


class TableRebuild:
    """Bring `tables` up to the log's end from the positions saved as `which`, then swap."""

    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, out: TextIO, *, swap_lag: int
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.out = out
        self.swap_lag = swap_lag
        self.rebuild_group = f"{settings.group_id}-rebuild"

    async def live_lag(self, ends: Mapping[int, int]) -> int:
        committed = await committed_offsets(
            self.settings.kafka_bootstrap_servers, self.settings.group_id, self.settings.topic
        )
        return remaining(committed, ends)

    async def catch_up(
        self, reader: LogReader, tables: Tables, which: str, positions: Offsets, what: str
    ) -> int:
        """Apply the log to `tables` until within `swap_lag` offsets of its end; the records
        applied."""
        until = await reader.end_offsets()
        start = dict(positions)
        progress = Progress(what, remaining(start, until), out=self.out)
        done = 0
        live_lag: int | None = None
        lag_checked = 0.0
        loop = asyncio.get_running_loop()
        while True:
            # The next batch is fetched and decoded while this one is written.
            async for batch in read_ahead(_prepared(reader, until)):
                async with self.pool.acquire() as connection, connection.transaction():
                    await _write(connection, tables, which, positions, batch, totals=False)
                done += batch.records
                if loop.time() - lag_checked > 2.0:
                    lag_checked = loop.time()
                    # The rebuild group's commit shows its progress to lagmon (every 2 s, not
                    # per batch: the positions that matter, to resume, were saved with the rows).
                    await reader.commit(positions)
                    live_lag = await self.live_lag(until)
                progress.total = remaining(start, until)
                progress.show(
                    remaining(start, until) - remaining(positions, until), live_lag=live_lag
                )
            until = await reader.end_offsets()
            if remaining(positions, until) <= self.swap_lag:
                # One aggregate instead of per-batch deltas while catching up; the swap's last
                # records move the totals one by one again.
                async with self.pool.acquire() as connection, connection.transaction():
                    await repository.recount_authors(connection, tables)
                progress.total = remaining(start, until)
                progress.finish(
                    remaining(start, until) - remaining(positions, until),
                    live_lag=await self.live_lag(until),
                )
                return done

    async def swap(
        self,
        reader: LogReader,
        tables: Tables,
        which: str,
        positions: Offsets,
        renames: list[tuple[Tables, Tables]],
        drop_first: Tables | None,
    ) -> int:
        """Under ACCESS EXCLUSIVE locks on the live tables: the rest of the log up to its end
        into `tables`, then the renames; the previous tables' positions := what the live group
        had committed. Returns the records applied under the lock."""
        applied = 0
        async with self.pool.acquire() as connection, connection.transaction():
            # Waits for the live counter's batch in hand (milliseconds); readers queue behind
            # this request meanwhile, so a stuck batch fails the swap quickly (then retried).
            await connection.execute("SET LOCAL lock_timeout = '5s'")
            # Holding the locks while Kafka does not answer: PostgreSQL ends the session (and
            # the locks) rather than keep the live tables blocked; a rerun resumes.
            await connection.execute("SET LOCAL idle_in_transaction_session_timeout = '15s'")
            await connection.execute(
                f"LOCK TABLE {LIVE_TABLES.blog_state}, {LIVE_TABLES.author_stats} "
                "IN ACCESS EXCLUSIVE MODE"
            )
            # Nothing reaches the live tables now: what they hold came from records below these.
            committed = await committed_offsets(
                self.settings.kafka_bootstrap_servers, self.settings.group_id, self.settings.topic
            )
            until = await reader.end_offsets()
            async for batch in _prepared(reader, until):
                await _write(connection, tables, which, positions, batch)
                applied += batch.records
            if drop_first is not None:
                await _drop(connection, drop_first)
            for source, target in renames:
                await _rename(connection, source, target)
            await connection.execute(_FORGET_POSITIONS, which)
            await connection.execute(_FORGET_POSITIONS, PREVIOUS)
            await _save_positions(connection, PREVIOUS, committed)
            blogs: int = await connection.fetchval("SELECT count(*) FROM counter.blog_state")
        await reader.commit(positions)
        print(
            f"swapped at offsets {offsets_text(until)} ({applied} records applied under the "
            f"lock); {blogs:,} blog rows; the live group had committed {offsets_text(committed)}",
            file=self.out,
        )
        return applied


async def _prepare(connection: DbConnection, *, fresh: bool) -> Offsets:
    """The shadow tables (created empty, or kept to resume) and the positions to read from."""
    await connection.execute(_POSITIONS_TABLE)
    if fresh or not await _exists(connection, SHADOW_TABLES):
        async with connection.transaction():
            await _drop(connection, SHADOW_TABLES)
            pairs = [
                (LIVE_TABLES.blog_state, SHADOW_TABLES.blog_state),
                (LIVE_TABLES.author_stats, SHADOW_TABLES.author_stats),
            ]
            for live, shadow in pairs:
                await connection.execute(f"CREATE TABLE {shadow} (LIKE {live} INCLUDING ALL)")
            await connection.execute(_FORGET_POSITIONS, REBUILD)
        return {}
    return await _load_positions(connection, REBUILD)


async def run_rebuild(
    settings: Settings, out: TextIO, *, swap_lag: int = 500, fresh: bool = False
) -> Outcome:
    await migrate(settings)
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as connection:
            positions = await _prepare(connection, fresh=fresh)
        if positions:
            print(f"resuming the rebuild from offsets {offsets_text(positions)}", file=out)
        job = TableRebuild(settings, pool, out, swap_lag=swap_lag)
        async with LogReader(
            settings.kafka_bootstrap_servers, settings.topic, group_id=job.rebuild_group
        ) as reader:
            await reader.seek(positions)
            applied = await job.catch_up(
                reader, SHADOW_TABLES, REBUILD, positions, "counter rebuild"
            )
            swap_records = await _swap_retrying(
                job,
                reader,
                SHADOW_TABLES,
                REBUILD,
                positions,
                [(LIVE_TABLES, PREVIOUS_TABLES), (SHADOW_TABLES, LIVE_TABLES)],
                PREVIOUS_TABLES,
            )
        blogs: int = await pool.fetchval("SELECT count(*) FROM counter.blog_state")
    finally:
        await pool.close()
    await _forget(settings, job.rebuild_group, out)
    print(
        "counter rebuild: done; the previous tables are kept as counter.*_previous "
        "(python -m counter rebuild --rollback | --prune)",
        file=out,
    )
    return Outcome(applied, swap_records, blogs)


async def _swap_retrying(
    job: TableRebuild,
    reader: LogReader,
    tables: Tables,
    which: str,
    positions: Offsets,
    renames: list[tuple[Tables, Tables]],
    drop_first: Tables | None,
) -> int:
    while True:
        try:
            return await job.swap(reader, tables, which, positions, renames, drop_first)
        except asyncpg.exceptions.LockNotAvailableError:
            # The swap's transaction rolled back: the positions in memory ran ahead of the
            # saved ones, so read again from those.
            async with job.pool.acquire() as connection:
                positions.clear()
                positions.update(await _load_positions(connection, which))
            await reader.seek(positions)
            print("swap: the live tables stayed locked for 5 s; catching up again", file=job.out)
            await job.catch_up(reader, tables, which, positions, "catch-up")


async def _forget(settings: Settings, group: str, out: TextIO) -> None:
    why = await forget_group(settings.kafka_bootstrap_servers, group)
    if why is not None:
        print(f"could not delete the finished group {group} ({why}); delete it by hand", file=out)


async def run_rollback(settings: Settings, out: TextIO, *, swap_lag: int = 500) -> int:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as connection:
            await connection.execute(_POSITIONS_TABLE)
            if not await _exists(connection, PREVIOUS_TABLES):
                print("counter rebuild --rollback: no previous tables to go back to", file=out)
                return EXIT_NOTHING_TO_DO
            positions = await _load_positions(connection, PREVIOUS)
        job = TableRebuild(settings, pool, out, swap_lag=swap_lag)
        async with LogReader(
            settings.kafka_bootstrap_servers, settings.topic, group_id=job.rebuild_group
        ) as reader:
            await reader.seek(positions)
            await job.catch_up(reader, PREVIOUS_TABLES, PREVIOUS, positions, "catch-up previous")
            await _swap_retrying(
                job,
                reader,
                PREVIOUS_TABLES,
                PREVIOUS,
                positions,
                [
                    (LIVE_TABLES, SWAP_TABLES),
                    (PREVIOUS_TABLES, LIVE_TABLES),
                    (SWAP_TABLES, PREVIOUS_TABLES),
                ],
                None,
            )
    finally:
        await pool.close()
    await _forget(settings, job.rebuild_group, out)
    print(
        "counter rebuild --rollback: done; the tables swapped out are counter.*_previous", file=out
    )
    return 0


async def run_prune(settings: Settings, out: TextIO) -> int:
    connection = await asyncpg.connect(settings.database_url)
    try:
        await connection.execute(_POSITIONS_TABLE)
        existed = await _exists(connection, PREVIOUS_TABLES)
        async with connection.transaction():
            await _drop(connection, PREVIOUS_TABLES)
            await connection.execute(_FORGET_POSITIONS, PREVIOUS)
    finally:
        await connection.close()
    print(
        "counter rebuild --prune: dropped counter.*_previous"
        if existed
        else "counter rebuild --prune: no previous tables",
        file=out,
    )
    return 0


def main_rebuild(settings: Settings, *, rollback: bool, prune: bool, fresh: bool) -> int:
    if prune:
        return asyncio.run(run_prune(settings, sys.stdout))
    if rollback:
        return asyncio.run(run_rollback(settings, sys.stdout))
    asyncio.run(run_rebuild(settings, sys.stdout, fresh=fresh))
    return 0

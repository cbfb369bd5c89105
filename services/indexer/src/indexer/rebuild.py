"""`python -m indexer rebuild` (`make rebuild-index`): the next physical index (`blogs-vN+1`, the
current mapping) built from `blogs-events` while the live indexer and search keep running, then
put behind the alias atomically, without losing an update made meanwhile. `--rollback` puts the
previous index back (brought up to date first), `--prune` deletes the indices no longer used.

How no update is lost and search never misses a blog: the rebuild reads the log from the
beginning under its own group (`<group>-rebuild-<index>`, committed after each bulk, so a rebuild
killed with -9 resumes into the same index). Once within `--swap-lag` offsets of the end it puts a
write block on the live index: the live indexer's bulks then fail item by item with
`cluster_block_exception`, which it retries (nothing committed), and search still reads it. Every
record the live index holds is now below the end offsets read next; the rebuild applies the log
up to them, refreshes, and swaps the alias in one `_aliases` request: search sees a superset of
what it saw. The block is lifted, the live indexer's retried bulk goes through the alias into the
new index, and the rebuild applies the records that arrived meanwhile too (external versions make
the overlap harmless).

The previous index is complete up to what the live group had committed when it was blocked
(kept in its `_meta`): `--rollback` applies the log from there to it, then swaps it back the same
way."""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from elasticsearch import AsyncElasticsearch, NotFoundError

from blog_events.fast import FastEnvelope
from indexer.app import EVENT_DECODER, elasticsearch_client
from indexer.handler import make_batch_handler
from indexer.index import MAPPINGS
from indexer.settings import IndexerSettings
from service_kit.consumer import ConsumedEvent, RejectedEvents, decode_records
from service_kit.consumer.records import Record
from service_kit.replay import (
    LogReader,
    Progress,
    as_json_offsets,
    committed_offsets,
    forget_group,
    from_json_offsets,
    offsets_text,
    read_ahead,
    remaining,
)

log = logging.getLogger(__name__)

EXIT_NOTHING_TO_DO = 2
BUILDING, LIVE, RETIRED = "building", "live", "retired"


@dataclass(frozen=True)
class Decoded:
    records: list[Record]
    events: list[ConsumedEvent[FastEnvelope]]


@dataclass(frozen=True)
class Outcome:
    index: str
    applied_records: int
    seconds: float
    rejected: int


def version_of(alias: str, index: str) -> int | None:
    found = re.fullmatch(rf"{re.escape(alias)}-v(\d+)", index)
    return int(found.group(1)) if found else None


class IndexRebuild:
    def __init__(
        self,
        settings: IndexerSettings,
        es: AsyncElasticsearch,
        out: TextIO,
        *,
        swap_lag: int,
        batch: int,
    ) -> None:
        self.settings = settings
        self.es = es
        self.out = out
        self.swap_lag = swap_lag
        self.batch = batch
        self.alias = settings.index_alias
        self.rejected = 0

    def group(self, index: str) -> str:
        return f"{self.settings.group_id}-rebuild-{index}"

    async def live_index(self) -> str:
        found = await self.es.indices.get_alias(name=self.alias)
        indices = [str(name) for name in sorted(found.body)]
        if len(indices) != 1:
            raise RuntimeError(f"alias {self.alias} points at {indices}, expected one index")
        return indices[0]

    async def versions(self) -> dict[str, dict[str, Any]]:
        """Every `<alias>-vN` index -> its `_meta` (what the rebuilds noted on it)."""
        try:
            found = await self.es.indices.get_mapping(index=f"{self.alias}-v*")
        except NotFoundError:
            return {}
        return {
            name: dict(body["mappings"].get("_meta", {}))
            for name, body in found.body.items()
            if version_of(self.alias, name) is not None
        }

    async def set_meta(self, index: str, **meta: Any) -> None:
        current = (await self.versions()).get(index, {})
        await self.es.indices.put_mapping(index=index, meta={**current, **meta})

    async def recover(self) -> str:
        """Finish what a rebuild killed during its swap left: a write block (lifted: only a
        swap sets one, on this alias's indices), or the alias already on an index still marked
        `building` (marked live; the index it replaced retired, complete up to nothing known, so
        a rollback to it replays the whole log). Returns the live index."""
        await self.es.indices.put_settings(
            index=f"{self.alias}-v*", settings={"index.blocks.write": None}
        )
        current = await self.live_index()
        meta = (await self.versions()).get(current, {})
        if meta.get("state") == BUILDING:
            await self.set_meta(current, state=LIVE)
            replaced = meta.get("from")
            versions = await self.versions()
            if replaced in versions and versions[replaced].get("state") != RETIRED:
                await self.set_meta(replaced, state=RETIRED, complete_to={})
            print(
                f"{current} was swapped in by a rebuild killed just after: marked live",
                file=self.out,
            )
        return current

    async def live_lag(self, ends: Mapping[int, int]) -> int:
        committed = await committed_offsets(
            self.settings.kafka_bootstrap_servers, self.settings.group_id, self.settings.topic
        )
        return remaining(committed, ends)

    async def apply(self, index: str, batch: Decoded) -> None:
        if not batch.events:
            return
        handler = make_batch_handler(self.es, index, require_alias=False)
        try:
            await handler(batch.events)
        except RejectedEvents as rejected:
            # Documents Elasticsearch refuses (the live group dead-letters them): counted.
            self.rejected += len(rejected.rejected)
            log.warning("%d event(s) rejected by %s", len(rejected.rejected), index)

    async def decoded(self, reader: LogReader, until: Mapping[int, int]) -> AsyncIterator[Decoded]:
        async for records in reader.batches(until, max_records=self.batch):
            events, _undecodable = decode_records(records, EVENT_DECODER)  # the live group DLQs
            yield Decoded(records, events)

    async def catch_up(self, reader: LogReader, index: str, what: str) -> int:
        positions = await reader.positions()
        until = await reader.end_offsets()
        start = dict(positions)
        progress = Progress(what, remaining(start, until), out=self.out)
        done = 0
        live_lag: int | None = None
        loop = asyncio.get_running_loop()
        lag_checked = 0.0
        while True:
            # The next batch is fetched and decoded while this one's bulk runs.
            async for batch in read_ahead(self.decoded(reader, until)):
                await self.apply(index, batch)
                for record in batch.records:
                    positions[record.partition] = record.offset + 1
                await reader.commit(positions)  # after the bulk: durable, so resumable
                done += len(batch.records)
                if loop.time() - lag_checked > 2.0:
                    lag_checked = loop.time()
                    live_lag = await self.live_lag(until)
                progress.total = remaining(start, until)
                progress.show(progress.total - remaining(positions, until), live_lag=live_lag)
            positions = await reader.positions()
            until = await reader.end_offsets()
            if remaining(positions, until) <= self.swap_lag:
                progress.total = remaining(start, until)
                progress.finish(
                    progress.total - remaining(positions, until),
                    live_lag=await self.live_lag(until),
                )
                return done

    async def apply_until(self, reader: LogReader, index: str, until: Mapping[int, int]) -> int:
        applied = 0
        async for batch in self.decoded(reader, until):
            await self.apply(index, batch)
            applied += len(batch.records)
        await reader.commit(await reader.positions())
        return applied

    async def swap(self, reader: LogReader, old: str, new: str) -> None:
        """Write-block `old`, bring `new` past everything `old` holds, swap the alias, lift the
        block, apply what came meanwhile."""
        await self.es.indices.put_settings(index=new, settings={"index.refresh_interval": None})
        await self.es.indices.put_settings(index=old, settings={"index.blocks.write": True})
        try:
            # The live group cannot write `old` now: all it applied there is below `until`,
            # and all it committed is in `old`.
            committed = await committed_offsets(
                self.settings.kafka_bootstrap_servers, self.settings.group_id, self.settings.topic
            )
            until = await reader.end_offsets()
            before = await self.apply_until(reader, new, until)
            await self.es.indices.refresh(index=new)
            await self.es.indices.update_aliases(
                actions=[
                    {"remove": {"index": old, "alias": self.alias}},
                    {"add": {"index": new, "alias": self.alias, "is_write_index": True}},
                ]
            )
        finally:
            await self.es.indices.put_settings(index=old, settings={"index.blocks.write": None})
        after = await self.apply_until(reader, new, await reader.end_offsets())
        await self.es.indices.refresh(index=new)
        now = datetime.now(UTC).isoformat()
        await self.set_meta(
            old, state=RETIRED, complete_to=as_json_offsets(committed), retired_at=now
        )
        await self.set_meta(new, state=LIVE, live_since=now)
        print(
            f"swapped alias {self.alias}: {old} -> {new} at offsets {offsets_text(until)} "
            f"({before} records applied while {old} was write-blocked, {after} after); "
            f"{old} is kept, complete up to {offsets_text(committed)}",
            file=self.out,
        )


def new_index_body(mappings: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(dict(mappings))
    body["_meta"] = dict(meta)
    return body


async def run_rebuild(
    settings: IndexerSettings,
    out: TextIO,
    *,
    swap_lag: int = 500,
    batch: int = 2000,
    mappings: Mapping[str, Any] = MAPPINGS,
) -> Outcome:
    es = elasticsearch_client(settings.es_url)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        job = IndexRebuild(settings, es, out, swap_lag=swap_lag, batch=batch)
        old = await job.recover()
        versions = await job.versions()
        building = sorted(
            (name for name, meta in versions.items() if meta.get("state") == BUILDING),
            key=lambda name: version_of(settings.index_alias, name) or 0,
        )
        if building:
            new = building[-1]
            print(f"resuming the rebuild of {new}", file=out)
        else:
            number = max([version_of(settings.index_alias, n) or 0 for n in [*versions, old]]) + 1
            new = f"{settings.index_alias}-v{number}"
            await es.indices.create(
                index=new,
                mappings=new_index_body(
                    mappings, {"state": BUILDING, "from": old, "group": job.group(new)}
                ),
                # No refresh while building (nobody searches it yet): faster bulk indexing.
                settings={"index.refresh_interval": "-1"},
            )
            print(f"building {new} (alias {settings.index_alias} -> {old} meanwhile)", file=out)
        async with LogReader(
            settings.kafka_bootstrap_servers, settings.topic, group_id=job.group(new)
        ) as reader:
            await reader.seek(await reader.committed())
            applied = await job.catch_up(reader, new, f"rebuild {new}")
            await job.swap(reader, old, new)
    finally:
        await es.close()
    await _forget(settings, job.group(new), out)
    print(
        f"indexer rebuild: done; {old} kept for `python -m indexer rebuild --rollback`, "
        "`--prune` deletes it",
        file=out,
    )
    return Outcome(new, applied, loop.time() - started, job.rejected)


async def _forget(settings: IndexerSettings, group: str, out: TextIO) -> None:
    """The finished rebuild's group goes, so lag monitoring does not watch it fall behind."""
    why = await forget_group(settings.kafka_bootstrap_servers, group)
    if why is not None:
        print(f"could not delete the finished group {group} ({why}); delete it by hand", file=out)


async def run_rollback(settings: IndexerSettings, out: TextIO, *, swap_lag: int = 500) -> int:
    es = elasticsearch_client(settings.es_url)
    try:
        job = IndexRebuild(settings, es, out, swap_lag=swap_lag, batch=2000)
        current = await job.recover()
        retired = sorted(
            (
                name
                for name, meta in (await job.versions()).items()
                if meta.get("state") == RETIRED and name != current
            ),
            key=lambda name: version_of(settings.index_alias, name) or 0,
        )
        if not retired:
            print("indexer rebuild --rollback: no previous index to go back to", file=out)
            return EXIT_NOTHING_TO_DO
        previous = retired[-1]
        meta = (await job.versions())[previous]
        async with LogReader(
            settings.kafka_bootstrap_servers, settings.topic, group_id=job.group(previous)
        ) as reader:
            await reader.seek(from_json_offsets(meta.get("complete_to", {})))
            await job.catch_up(reader, previous, f"catch-up {previous}")
            await job.swap(reader, current, previous)
    finally:
        await es.close()
    await _forget(settings, job.group(previous), out)
    return 0


async def run_prune(settings: IndexerSettings, out: TextIO) -> int:
    es = elasticsearch_client(settings.es_url)
    try:
        job = IndexRebuild(settings, es, out, swap_lag=0, batch=1)
        current = await job.live_index()
        doomed = [
            name
            for name, meta in (await job.versions()).items()
            if name != current and meta.get("state") == RETIRED
        ]
        if doomed:
            await es.indices.delete(index=",".join(sorted(doomed)))
    finally:
        await es.close()
    print(
        f"indexer rebuild --prune: deleted {', '.join(sorted(doomed))}"
        if doomed
        else "indexer rebuild --prune: no previous index",
        file=out,
    )
    return 0


def main_rebuild(
    settings: IndexerSettings, *, rollback: bool, prune: bool, swap_lag: int, batch: int
) -> int:
    if prune:
        return asyncio.run(run_prune(settings, sys.stdout))
    if rollback:
        return asyncio.run(run_rollback(settings, sys.stderr, swap_lag=swap_lag))
    asyncio.run(run_rebuild(settings, sys.stderr, swap_lag=swap_lag, batch=batch))
    return 0

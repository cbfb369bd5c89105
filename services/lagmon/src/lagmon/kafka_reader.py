"""Reads one raw sample from Kafka: groups, their state and committed offsets on the watched
topics, the partitions' log-start/log-end offsets, and the timestamps of the oldest records each
lagging group has not processed. Uses the admin API and a group-less consumer only, so the
monitor never joins, disturbs or depends on the groups it watches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from service_kit.kafka_clients import client_options

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]

# Consumer groups use the "consumer" protocol; "" is a group that only stores offsets.
CONSUMER_PROTOCOL_TYPES = frozenset({"consumer", ""})
_TIMESTAMP_CACHE_SIZE = 10_000
_GROUP_CONCURRENCY = 16
# DescribeGroups answers this (or state "Dead") for a group the coordinator does not know.
GROUP_ID_NOT_FOUND = 69


@dataclass(frozen=True)
class RawGroup:
    group: str
    state: str
    members: int
    committed: dict[TopicPartitionKey, int]  # only partitions of watched topics with a commit
    error: str | None = None


@dataclass(frozen=True)
class RawSample:
    at: float
    partitions: dict[TopicPartitionKey, tuple[int, int]]  # (log start, log end)
    groups: list[RawGroup]
    # Unix time of the record at a (topic, partition, offset), when it could be read.
    record_times: dict[tuple[str, int, int], float] = field(default_factory=dict)


class KafkaLagReader:
    def __init__(
        self,
        bootstrap_servers: str,
        topics: Sequence[str],
        *,
        timestamp_fetch_timeout_s: float = 3.0,
        request_timeout_s: float = 10.0,
        expected_groups: Sequence[str] = (),
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topics = list(topics)
        # Read (offsets, state) even when Kafka does not list them or they have no commit.
        self._expected_groups = frozenset(expected_groups)
        self._timestamp_fetch_timeout_s = timestamp_fetch_timeout_s
        self._request_timeout_ms = int(request_timeout_s * 1000)
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        # A record's timestamp never changes, so lagging groups sitting on the same offset
        # cost one fetch, not one per sample.
        self._record_times: OrderedDict[tuple[str, int, int], float] = OrderedDict()

    async def start(self) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap,
            request_timeout_ms=self._request_timeout_ms,
            client_id="lagmon",
            **client_options(),
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="lagmon",
            request_timeout_ms=self._request_timeout_ms,
            # One record per partition is all that is needed; the broker still returns a
            # whole first batch when it is larger.
            max_partition_fetch_bytes=64 * 1024,
            **client_options(),
            fetch_max_wait_ms=100,
        )
        await admin.start()
        try:
            await consumer.start()
        except BaseException:
            await admin.close()
            raise
        self._admin, self._consumer = admin, consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    @property
    def topics(self) -> list[str]:
        return list(self._topics)

    async def read(self) -> RawSample:
        admin, consumer = self._clients()
        listed = await admin.list_consumer_groups()
        listed_ids = {g[0] for g in listed if g[1] in CONSUMER_PROTOCOL_TYPES}
        group_ids = sorted(listed_ids | self._expected_groups)
        # Committed offsets first, then the log ends: a commit can then never appear to be
        # ahead of the end offset read in the same sample.
        committed = await self._committed_offsets(admin, group_ids)
        watched = {
            g: offsets
            for g, offsets in committed.items()
            if isinstance(offsets, str) or offsets or g in self._expected_groups
        }
        partitions = await self._partition_offsets(admin, consumer)
        at = time.time()
        readable = [g for g, offsets in watched.items() if not isinstance(offsets, str)]
        descriptions = await self._describe(admin, readable)
        groups = []
        for group_id, offsets in watched.items():
            if isinstance(offsets, str):
                error = f"cannot fetch offsets: {offsets}"
                groups.append(RawGroup(group_id, "Unknown", 0, {}, error))
                continue
            described = descriptions.get(group_id)
            if isinstance(described, str) or described is None:
                error = f"cannot describe group: {described or 'no answer'}"
                groups.append(RawGroup(group_id, "Unknown", 0, offsets, error))
                continue
            state, members = described
            groups.append(RawGroup(group_id, state, members, offsets))
        wanted = {
            (topic, partition, offset)
            for group in groups
            for (topic, partition), offset in group.committed.items()
            if (topic, partition) in partitions and offset < partitions[(topic, partition)][1]
        }
        # A watched partition without a commit is read from its log start (see rules.Observation).
        wanted |= {
            (topic, partition, start)
            for group in groups
            if group.error is None
            for (topic, partition), (start, end) in partitions.items()
            if (topic, partition) not in group.committed and start < end
        }
        record_times = await self.record_times(wanted)
        return RawSample(at, partitions, groups, record_times)

    def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            raise RuntimeError("KafkaLagReader.start() was not called")
        return self._admin, self._consumer

    async def _committed_offsets(
        self, admin: AIOKafkaAdminClient, group_ids: Iterable[str]
    ) -> dict[str, dict[TopicPartitionKey, int] | str]:
        """group -> its committed offsets on the watched topics, or why they could not be read."""
        limit = asyncio.Semaphore(_GROUP_CONCURRENCY)
        watched_topics = set(self._topics)

        async def fetch(group_id: str) -> dict[TopicPartitionKey, int] | str:
            async with limit:
                try:
                    offsets = await admin.list_consumer_group_offsets(group_id)
                except Exception as exc:
                    log.warning("cannot fetch the offsets of group %s: %s", group_id, exc)
                    return f"{type(exc).__name__}: {exc}"
            return {
                (tp.topic, tp.partition): meta.offset
                for tp, meta in offsets.items()
                if tp.topic in watched_topics and meta.offset >= 0
            }

        ids = list(group_ids)
        results = await asyncio.gather(*(fetch(group_id) for group_id in ids))
        return dict(zip(ids, results, strict=True))

    async def _partition_offsets(
        self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer
    ) -> dict[TopicPartitionKey, tuple[int, int]]:
        described = await admin.describe_topics(self._topics)
        tps = [
            TopicPartition(entry["topic"], p["partition"])
            for entry in described
            if entry["error_code"] == 0
            for p in entry["partitions"]
        ]
        if not tps:
            return {}
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): (starts[tp], ends[tp]) for tp in sorted(tps)}

    async def _describe(
        self, admin: AIOKafkaAdminClient, group_ids: Sequence[str]
    ) -> dict[str, tuple[str, int] | str]:
        """group -> (state, members), or why it could not be described."""
        described: dict[str, tuple[str, int] | str] = {}
        # One group per request, one at a time: aiokafka 0.14 fails to decode a DescribeGroups
        # response holding several groups (and then drops the connection under every other
        # request in flight). Only the watched groups are described, so this stays cheap.
        for group_id in group_ids:
            try:
                responses = await admin.describe_consumer_groups([group_id])
            except Exception as exc:
                log.warning("cannot describe group %s: %s", group_id, exc)
                described[group_id] = f"{type(exc).__name__}: {exc}"
                continue
            for response in responses:
                # (error_code, group, state, protocol_type, protocol, members, ...)
                for entry in response.groups:
                    error_code, name, state, members = entry[0], entry[1], entry[2], entry[5]
                    if error_code == GROUP_ID_NOT_FOUND:
                        described[name] = ("Dead", 0)  # no such group (yet, or any more)
                    elif error_code:
                        described[name] = f"DescribeGroups error code {error_code}"
                    else:
                        described[name] = (state, len(members))
        return described

    async def record_times(
        self, wanted: Iterable[tuple[str, int, int]]
    ) -> dict[tuple[str, int, int], float]:
        """Unix time of the record at each (topic, partition, offset) (or of the next record
        after it, if that offset holds none); positions that cannot be read in time are
        missing from the result."""
        found = {key: self._record_times[key] for key in wanted if key in self._record_times}
        missing: defaultdict[TopicPartitionKey, list[int]] = defaultdict(list)
        for topic, partition, offset in sorted(set(wanted) - found.keys()):
            missing[(topic, partition)].append(offset)
        # A consumer has one position per partition: one round per distinct offset.
        while missing:
            round_positions = {tp: offsets.pop(0) for tp, offsets in missing.items()}
            missing = defaultdict(list, {tp: offs for tp, offs in missing.items() if offs})
            fetched = await self._fetch_round(round_positions)
            for (topic, partition), (offset, ts) in fetched.items():
                key = (topic, partition, offset)
                found[key] = ts
                self._record_times[key] = ts
        while len(self._record_times) > _TIMESTAMP_CACHE_SIZE:
            self._record_times.popitem(last=False)
        return found

    async def _fetch_round(
        self, positions: dict[TopicPartitionKey, int]
    ) -> dict[TopicPartitionKey, tuple[int, float]]:
        _, consumer = self._clients()
        tps = {
            TopicPartition(topic, partition): offset
            for (topic, partition), offset in positions.items()
        }
        consumer.assign(list(tps))
        for tp, offset in tps.items():
            consumer.seek(tp, offset)
        result: dict[TopicPartitionKey, tuple[int, float]] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timestamp_fetch_timeout_s
        pending = set(tps)
        while pending and loop.time() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=200)
            for tp, records in batches.items():
                if tp in pending and records:
                    result[(tp.topic, tp.partition)] = (tps[tp], records[0].timestamp / 1000.0)
                    pending.discard(tp)
        if pending:
            log.warning("no record read in time for %s", sorted(pending))
        consumer.assign([])
        return result

"""The monitor against the real Kafka: its lag equals what Kafka's own consumer-group tool
prints, and a group whose consumers are dead is still reported, lagging, then STOP."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from blog_testkit import Stack, wait_until
from lagmon.kafka_reader import KafkaLagReader
from lagmon.monitor import LagMonitor, LagSnapshot
from lagmon.rules import RuleConfig, Status
from lagmon.sampler import Sampler

pytestmark = pytest.mark.integration

KAFKA_LIB = Path(__file__).resolve().parents[3] / ".state" / "kafka" / "lib"
CONSUMER_GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
PARTITIONS = 6
RECORDS_PER_PARTITION = 10
# Record k of every partition is stamped T0 + k seconds, so lag seconds are predictable.
T0_AGO_S = 1000.0


async def produce(bootstrap: str, topic: str, per_partition: int, t0_ms: int | None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition in range(PARTITIONS):
            for k in range(per_partition):
                await producer.send(
                    topic,
                    b"{}",
                    partition=partition,
                    timestamp_ms=None if t0_ms is None else t0_ms + k * 1000,
                )
        await producer.flush()
    finally:
        await producer.stop()


async def commit_offsets(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """A group whose only consumer commits `offsets` (partition -> offset) and then dies."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in offsets])
        await consumer.commit({TopicPartition(topic, p): o for p, o in offsets.items()})
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def live_member(
    bootstrap: str, group: str, topic: str, commits: dict[int, int]
) -> AsyncIterator[AIOKafkaConsumer]:
    """A subscribed (Stable) member that committed `commits` and then holds still."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", heartbeat_interval_ms=500,
    )  # fmt: skip
    await consumer.start()
    try:
        await wait_until(
            lambda: _assigned(consumer), timeout=30, what=f"{group} gets its partitions"
        )
        await consumer.commit({TopicPartition(topic, p): o for p, o in commits.items()})
        yield consumer
    finally:
        await consumer.stop()


async def _assigned(consumer: AIOKafkaConsumer) -> bool:
    await asyncio.sleep(0)
    return len(consumer.assignment()) == PARTITIONS


async def consumer_group_command(bootstrap: str, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "java", "-cp", f"{KAFKA_LIB}/*", CONSUMER_GROUP_COMMAND,
        "--bootstrap-server", bootstrap, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 120)
    text = output.decode()
    assert process.returncode == 0, text
    return text


def parse_offsets(text: str) -> dict[tuple[str, int], tuple[int, int, int]]:
    """(group, partition) -> (current offset, log-end offset, lag), for rows with a commit."""
    rows: dict[tuple[str, int], tuple[int, int, int]] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        cells = line.split()
        if cells[:2] == ["GROUP", "TOPIC"]:
            header = cells
            continue
        if header is None or len(cells) < 6:
            continue
        row = dict(zip(header, cells, strict=False))
        if row["CURRENT-OFFSET"] == "-":
            continue  # no commit on that partition: the tool shows no lag either
        rows[(row["GROUP"], int(row["PARTITION"]))] = (
            int(row["CURRENT-OFFSET"]), int(row["LOG-END-OFFSET"]), int(row["LAG"]),
        )  # fmt: skip
    return rows


def parse_states(text: str) -> dict[str, tuple[str, int]]:
    """group -> (state, members) from `--describe --state`."""
    states: dict[str, tuple[str, int]] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        cells = line.split()
        if cells[:1] == ["GROUP"] and "STATE" in cells:
            header = cells
            continue
        if header is not None and cells and cells[0] != "GROUP":
            # "COORDINATOR (ID)" is two words in the header, one cell plus "(1)" in rows.
            states[cells[0]] = (cells[-2], int(cells[-1]))
    return states


def monitor_for(topic: str, rules: RuleConfig, bootstrap: str) -> Sampler:
    return Sampler(
        KafkaLagReader(bootstrap, [topic]),
        LagMonitor(rules, history_s=600, topics=(topic,)),
        interval_s=0.3,
    )


async def test_lag_equals_what_kafka_consumer_group_command_prints(
    stack: Stack, topic: str
) -> None:
    if not list(KAFKA_LIB.glob("kafka-tools-*.jar")):
        pytest.skip(f"kafka-tools jars not found in {KAFKA_LIB} (run `make up`)")
    bootstrap = stack.kafka_bootstrap
    t0 = time.time() - T0_AGO_S
    await produce(bootstrap, topic, RECORDS_PER_PARTITION, int(t0 * 1000))
    dead, live = f"{topic}-dead", f"{topic}-live"
    await commit_offsets(bootstrap, dead, topic, {0: 3, 1: 10, 4: 7})
    sampler = monitor_for(topic, RuleConfig(window_s=60, stall_after_s=30), bootstrap)
    try:
        async with live_member(bootstrap, live, topic, {0: 1, 2: 5, 3: 10, 5: 9}):
            # Nothing produces or commits from here on: both reads see the same moment.
            snapshot = await sampler.sample_once()
            described = await consumer_group_command(
                bootstrap, "--describe", "--group", dead, "--group", live
            )
            states = await consumer_group_command(
                bootstrap, "--describe", "--state", "--group", dead, "--group", live
            )
    finally:
        await sampler.close()

    assert snapshot.error is None
    expected = parse_offsets(described)
    assert len(expected) == 7, described
    ours = {
        (g.group, p.partition): (p.committed_offset, p.log_end_offset, p.lag)
        for g in snapshot.groups
        if g.group in (dead, live)
        for p in g.partitions
        if p.committed_offset is not None
    }
    assert ours == expected

    # Both groups are reported, the dead one too, with Kafka's state and member count.
    assert parse_states(states) == {dead: ("Empty", 0), live: ("Stable", 1)}
    dead_group, live_group = snapshot.group(dead), snapshot.group(live)
    assert dead_group is not None
    assert live_group is not None
    assert (dead_group.state, dead_group.members) == ("Empty", 0)
    assert (live_group.state, live_group.members) == ("Stable", 1)

    # Lag seconds: now - timestamp of the record at the committed offset; 0 when caught up.
    for group in (dead_group, live_group):
        for p in group.partitions:
            if p.lag == 0:
                assert p.lag_seconds == 0.0
                continue
            position = 0 if p.committed_offset is None else p.committed_offset
            expected_s = snapshot.at - (int(t0 * 1000) + position * 1000) / 1000
            assert p.lag_seconds == pytest.approx(expected_s, abs=0.01), (group.group, p)
    # Partitions without a commit count from the log start (the whole partition).
    uncommitted = [p for p in dead_group.partitions if p.committed_offset is None]
    assert {p.partition for p in uncommitted} == {2, 3, 5}
    assert all(p.lag == RECORDS_PER_PARTITION for p in uncommitted)


async def test_group_with_dead_consumers_lags_more_and_goes_to_stop(
    stack: Stack, topic: str
) -> None:
    bootstrap = stack.kafka_bootstrap
    await produce(bootstrap, topic, 2, None)
    dead = f"{topic}-dead"
    await commit_offsets(bootstrap, dead, topic, dict.fromkeys(range(PARTITIONS), 2))
    rules = RuleConfig(window_s=4.0, stall_after_s=1.5, min_observations=3)
    sampler = monitor_for(topic, rules, bootstrap)
    seen: list[LagSnapshot] = []
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        first = await sampler.sample_once()
        group = first.group(dead)
        assert group is not None
        assert (group.state, group.members, group.lag, group.status) == (
            "Empty", 0, 0, Status.OK,
        )  # fmt: skip

        async def stopped() -> bool:
            # Posting goes on while nobody consumes.
            await producer.send_and_wait(topic, b"{}", partition=0)
            snapshot = await sampler.sample_once()
            seen.append(snapshot)
            g = snapshot.group(dead)
            return g is not None and g.status is Status.STOP

        await wait_until(stopped, timeout=30, interval=0.3, what=f"{dead} STOP")
    finally:
        await producer.stop()
        await sampler.close()

    lags = [s.group(dead).lag for s in seen]  # type: ignore[union-attr]
    assert lags == sorted(lags)
    assert lags[-1] > lags[0]
    last = seen[-1].group(dead)
    assert last is not None
    assert last.state == "Empty"
    assert last.lag_seconds is not None
    assert last.lag_seconds > rules.window_s
    statuses = [s.group(dead).status for s in seen]  # type: ignore[union-attr]
    # It went through STALL (offset not moving) before STOP (a whole window).
    assert Status.STALL in statuses
    assert statuses.index(Status.STALL) < statuses.index(Status.STOP)

"""The monitor against the real Kafka: its lag equals what Kafka's own consumer-group tool
prints, a group whose consumers are dead is still reported, lagging, and STOP on the second
sample; members that do not progress are STALL for as long as that lasts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from blog_testkit import Stack, wait_until
from blog_testkit.plugin import create_topic, delete_topic
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
        if commits:
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


def monitor_for(
    topic: str, rules: RuleConfig, bootstrap: str, expected: tuple[str, ...] = ()
) -> Sampler:
    return Sampler(
        KafkaLagReader(bootstrap, [topic], expected_groups=expected),
        LagMonitor(rules, history_s=600, topics=(topic,), expected_groups=expected),
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


async def test_group_with_dead_consumers_lags_more_and_is_stop_on_the_second_sample(
    stack: Stack, topic: str
) -> None:
    bootstrap = stack.kafka_bootstrap
    await produce(bootstrap, topic, 2, None)
    dead = f"{topic}-dead"
    await commit_offsets(bootstrap, dead, topic, dict.fromkeys(range(PARTITIONS), 2))
    rules = RuleConfig(window_s=60, stall_after_s=1.5, min_observations=3, stop_after_samples=2)
    sampler = monitor_for(topic, rules, bootstrap)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        first = await sampler.sample_once()
        group = first.group(dead)
        assert group is not None
        assert (group.state, group.members, group.lag, group.status) == (
            "Empty", 0, 0, Status.OK,
        )  # fmt: skip
        # Posting goes on while nobody consumes.
        seen: list[LagSnapshot] = []
        for _ in range(3):
            await producer.send_and_wait(topic, b"{}", partition=0)
            seen.append(await sampler.sample_once())
    finally:
        await producer.stop()
        await sampler.close()

    groups = [s.group(dead) for s in seen]
    assert all(g is not None for g in groups)
    lags = [g.lag for g in groups]  # type: ignore[union-attr]
    assert lags == [1, 2, 3]
    # Lag and no member: the grace (one sample), then STOP, from Kafka's facts.
    statuses = [g.status for g in groups]  # type: ignore[union-attr]
    assert statuses == [Status.WARN, Status.STOP, Status.STOP]
    last = groups[-1]
    assert last is not None
    assert last.state == "Empty"
    assert last.reason == f"{topic}[0]: no consumer (Empty) with lag 3 for 3 samples"
    assert last.lag_seconds is not None


async def test_members_not_committing_are_stall_and_stay_stall(stack: Stack, topic: str) -> None:
    bootstrap = stack.kafka_bootstrap
    await produce(bootstrap, topic, 4, None)
    stuck = f"{topic}-stuck"
    rules = RuleConfig(window_s=3, stall_after_s=1.5, min_observations=3, stop_after_samples=2)
    sampler = monitor_for(topic, rules, bootstrap)
    try:
        async with live_member(bootstrap, stuck, topic, dict.fromkeys(range(PARTITIONS), 1)):

            async def stalled_for_two_windows() -> LagSnapshot | None:
                snapshot = await sampler.sample_once()
                group = snapshot.group(stuck)
                assert group is not None
                assert group.status in {Status.OK, Status.STALL}, group
                long_enough = snapshot.at - first_at >= 2 * rules.window_s
                return snapshot if group.status is Status.STALL and long_enough else None

            first_at = (await sampler.sample_once()).at
            snapshot = await wait_until(
                stalled_for_two_windows, timeout=60, interval=0.3, what=f"{stuck} STALL"
            )
    finally:
        await sampler.close()
    assert snapshot is not None
    group = snapshot.group(stuck)
    assert group is not None
    # Members present and not moving: STALL however long it lasts (never STOP), with the facts.
    assert (group.state, group.members, group.lag) == ("Stable", 1, 3 * PARTITIONS)
    assert "not moving for" in group.reason
    assert "(1 member, Stable)" in group.reason


async def test_a_member_committing_an_older_offset_is_rewind_until_it_is_back(
    stack: Stack, topic: str
) -> None:
    bootstrap = stack.kafka_bootstrap
    await produce(bootstrap, topic, 10, None)
    group = f"{topic}-replay"
    sampler = monitor_for(topic, RuleConfig(window_s=60, stall_after_s=30), bootstrap)
    try:
        async with live_member(bootstrap, group, topic, {0: 8}) as member:
            before = (await sampler.sample_once()).group(group)
            # A reset for a replay, by the member itself (a stopped group's reset is STOP
            # until a consumer joins: nobody replays).
            await member.commit({TopicPartition(topic, 0): 2})
            rewound = (await sampler.sample_once()).group(group)
            await member.commit({TopicPartition(topic, 0): 5})
            replaying = (await sampler.sample_once()).group(group)
            await member.commit({TopicPartition(topic, 0): 9})
            recovered = (await sampler.sample_once()).group(group)
    finally:
        await sampler.close()
    assert before is not None
    assert rewound is not None
    assert replaying is not None
    assert recovered is not None
    assert before.status is not Status.REWIND
    assert (rewound.status, rewound.state, rewound.members) == (Status.REWIND, "Stable", 1)
    assert rewound.reason.startswith(f"{topic}[0]: committed offset moved back from 8 to 2")
    assert replaying.status is Status.REWIND  # 5 < 8: not back yet
    assert recovered.status is not Status.REWIND  # beyond where it was


async def test_a_group_reset_while_stopped_reads_rewind_once_a_consumer_replays(
    stack: Stack, topic: str
) -> None:
    bootstrap = stack.kafka_bootstrap
    await produce(bootstrap, topic, 10, None)
    group = f"{topic}-reset"
    await commit_offsets(bootstrap, group, topic, dict.fromkeys(range(PARTITIONS), 10))
    sampler = monitor_for(topic, RuleConfig(window_s=60, stall_after_s=30), bootstrap)
    try:
        caught_up = (await sampler.sample_once()).group(group)
        # What `kafka-consumer-groups --reset-offsets --to-offset 4 --execute` does.
        await commit_offsets(bootstrap, group, topic, dict.fromkeys(range(PARTITIONS), 4))
        reset = [(await sampler.sample_once()).group(group) for _ in range(2)]
        async with live_member(bootstrap, group, topic, dict.fromkeys(range(PARTITIONS), 4)):
            replaying = (await sampler.sample_once()).group(group)
    finally:
        await sampler.close()
    assert caught_up is not None
    assert caught_up.status is Status.OK
    assert [g.status for g in reset if g] == [Status.WARN, Status.STOP]  # nobody replays yet
    assert replaying is not None
    assert replaying.status is Status.REWIND
    assert "moved back from 10 to 4" in replaying.reason


async def test_expected_group_that_never_committed_reads_notfound(stack: Stack, topic: str) -> None:
    bootstrap = stack.kafka_bootstrap
    await produce(bootstrap, topic, 3, None)
    absent, joined = f"{topic}-absent", f"{topic}-joined"
    rules = RuleConfig(window_s=60, stall_after_s=30)
    sampler = monitor_for(topic, rules, bootstrap, expected=(absent, joined))
    try:
        # `joined` has a member that never commits (failing from its first batch).
        async with live_member(bootstrap, joined, topic, {}):
            snapshot = await sampler.sample_once()
    finally:
        await sampler.close()
    never, failing = snapshot.group(absent), snapshot.group(joined)
    assert never is not None
    assert failing is not None
    for group in (never, failing):
        assert group.status is Status.NOTFOUND
        assert group.expected
        assert group.lag == 3 * PARTITIONS  # everything retained waits for it
        assert len(group.partitions) == PARTITIONS
    assert (never.state, never.members) == ("Dead", 0)
    assert "never started, offsets expired, or the topic was recreated" in never.reason
    assert (failing.state, failing.members) == ("Stable", 1)
    assert "never committed" in failing.reason


async def test_expected_group_reads_notfound_after_its_topic_is_recreated(
    stack: Stack, topic: str
) -> None:
    bootstrap = stack.kafka_bootstrap
    await produce(bootstrap, topic, 3, None)
    group = f"{topic}-counter"
    await commit_offsets(bootstrap, group, topic, dict.fromkeys(range(PARTITIONS), 3))
    sampler = monitor_for(topic, RuleConfig(window_s=60, stall_after_s=30), bootstrap, (group,))
    try:
        before = (await sampler.sample_once()).group(group)
        await delete_topic(bootstrap, topic)

        async def recreated() -> bool:
            # Deletion completes in the background; creating again fails until it has.
            await create_topic(bootstrap, topic)
            return True

        await wait_until(recreated, timeout=60, interval=0.5, what=f"{topic} recreated")
        await produce(bootstrap, topic, 1, None)

        async def not_found() -> LagSnapshot | None:
            snapshot = await sampler.sample_once()
            found = snapshot.group(group)
            return snapshot if found is not None and found.status is Status.NOTFOUND else None

        after = await wait_until(not_found, timeout=60, interval=0.5, what=f"{group} NOTFOUND")
        assert after is not None
    finally:
        await sampler.close()
    assert before is not None
    assert before.status is Status.OK
    recreated_group = after.group(group)
    assert recreated_group is not None
    assert recreated_group.lag == PARTITIONS  # the new topic's records, none committed

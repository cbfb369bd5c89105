"""From raw samples to snapshots, history, /metrics text and the CLI table (no Kafka)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest

from lagmon.cli import one_shot_settings, render
from lagmon.kafka_reader import RawGroup, RawSample
from lagmon.metrics import MonitorMetrics
from lagmon.monitor import LagMonitor
from lagmon.rules import RuleConfig, Status
from lagmon.sampler import Sampler
from lagmon.settings import Settings

RULES = RuleConfig(window_s=20, stall_after_s=10, min_observations=3)
TOPIC = "blog-events"


def sample(
    at: float,
    ends: tuple[int, int],
    groups: list[RawGroup],
    record_times: dict[tuple[str, int, int], float] | None = None,
) -> RawSample:
    return RawSample(
        at=at,
        partitions={(TOPIC, 0): (0, ends[0]), (TOPIC, 1): (0, ends[1])},
        groups=groups,
        record_times=record_times or {},
    )


def test_snapshot_has_lag_lag_seconds_and_status_per_partition_and_group() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,))
    group = RawGroup("indexer", "Stable", 2, {(TOPIC, 0): 10, (TOPIC, 1): 5})
    snapshot = monitor.observe(sample(100.0, (10, 8), [group], {(TOPIC, 1, 5): 70.0}))
    indexer = snapshot.group("indexer")
    assert indexer is not None
    assert (indexer.state, indexer.members, indexer.lag) == ("Stable", 2, 3)
    p0, p1 = indexer.partitions
    assert (p0.lag, p0.lag_seconds, p0.committed_offset, p0.log_end_offset) == (0, 0.0, 10, 10)
    assert (p1.lag, p1.lag_seconds) == (3, 30.0)
    assert indexer.lag_seconds == 30.0
    assert indexer.status is Status.OK


def test_unreadable_record_time_gives_unknown_lag_seconds() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,))
    group = RawGroup("g", "Empty", 0, {(TOPIC, 0): 1, (TOPIC, 1): 1})
    snapshot = monitor.observe(sample(100.0, (5, 1), [group]))
    p0 = snapshot.groups[0].partitions[0]
    assert (p0.lag, p0.lag_seconds) == (4, None)


def test_group_without_commit_on_a_partition_counts_from_log_start() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,))
    group = RawGroup("g", "Stable", 1, {(TOPIC, 0): 3})
    snapshot = monitor.observe(sample(100.0, (3, 7), [group], {(TOPIC, 1, 0): 90.0}))
    p1 = snapshot.groups[0].partitions[1]
    assert (p1.committed_offset, p1.lag, p1.lag_seconds) == (None, 7, 10.0)


def test_dead_group_goes_to_stop_while_a_live_one_stays_ok() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,))
    statuses = []
    for step in range(6):
        at = 100.0 + 5 * step
        end = 10 + step
        dead = RawGroup("dead", "Empty", 0, {(TOPIC, 0): 10, (TOPIC, 1): 0})
        live = RawGroup("live", "Stable", 1, {(TOPIC, 0): end, (TOPIC, 1): 0})
        snapshot = monitor.observe(sample(at, (end, 0), [dead, live], {(TOPIC, 0, 10): 99.0}))
        statuses.append((snapshot.group("dead"), snapshot.group("live")))
    assert [live.status for _, live in statuses] == [Status.OK] * 6  # type: ignore[union-attr]
    # Caught up at first; lag and no member from the 2nd sample: the grace (WARN), then STOP.
    dead_statuses = [dead.status for dead, _ in statuses]  # type: ignore[union-attr]
    assert dead_statuses == [Status.OK, Status.WARN] + [Status.STOP] * 4
    last = statuses[-1][0]
    assert last is not None
    assert last.reason == f"{TOPIC}[0]: no consumer (Empty) with lag 5 for 5 samples"
    history = monitor.history(since=0)
    assert [p["lag"] for p in history["dead"]] == list(range(6))
    assert history["dead"][-1]["status"] == "STOP"


def test_a_new_monitor_says_stop_on_its_second_sample() -> None:
    # Nothing of the past is needed: Kafka says Empty, the lag says work is waiting.
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,))
    dead = RawGroup("counter", "Empty", 0, {(TOPIC, 0): 3, (TOPIC, 1): 0})
    first = monitor.observe(sample(100.0, (50, 0), [dead]))
    second = monitor.observe(sample(105.0, (50, 0), [dead]))
    assert (first.groups[0].status, second.groups[0].status) == (Status.WARN, Status.STOP)


def test_expected_group_without_commits_is_notfound_with_its_lag_from_the_log_start() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,), expected_groups=("counter",))
    never = RawGroup("counter", "Stable", 2, {})
    snapshot = monitor.observe(sample(100.0, (4, 0), [never], {(TOPIC, 0, 0): 40.0}))
    counter = snapshot.group("counter")
    assert counter is not None
    assert (counter.status, counter.expected, counter.members, counter.lag) == (
        Status.NOTFOUND, True, 2, 4,
    )  # fmt: skip
    assert counter.lag_seconds == 60.0
    assert "never committed" in counter.reason
    assert {p.status for p in counter.partitions} == {Status.NOTFOUND}
    assert [p.partition for p in counter.partitions] == [0, 1]


def test_expected_group_that_commits_leaves_notfound() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,), expected_groups=("counter",))
    monitor.observe(sample(100.0, (4, 0), [RawGroup("counter", "Stable", 1, {})]))
    committed = RawGroup("counter", "Stable", 1, {(TOPIC, 0): 4})
    snapshot = monitor.observe(sample(105.0, (4, 0), [committed]))
    assert snapshot.groups[0].status is Status.OK


def test_group_that_fails_to_sample_is_err() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,))
    broken = RawGroup("broken", "Unknown", 0, {}, error="cannot fetch offsets")
    snapshot = monitor.observe(sample(100.0, (1, 1), [broken]))
    assert snapshot.groups[0].status is Status.ERR


def test_groups_only_on_topics_they_committed_on() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC, "other"))
    raw = RawSample(
        at=1.0,
        partitions={(TOPIC, 0): (0, 1), ("other", 0): (0, 5)},
        groups=[RawGroup("g", "Stable", 1, {(TOPIC, 0): 1})],
    )
    snapshot = monitor.observe(raw)
    assert [p.topic for p in snapshot.groups[0].partitions] == [TOPIC]


def test_history_is_trimmed_and_vanished_groups_are_forgotten() -> None:
    monitor = LagMonitor(RULES, history_s=40, topics=(TOPIC,))
    group = RawGroup("g", "Stable", 1, {(TOPIC, 0): 0, (TOPIC, 1): 0})
    monitor.observe(sample(0.0, (0, 0), [group]))
    monitor.observe(sample(100.0, (0, 0), []))
    assert monitor.history(since=0) == {}


def test_failed_sample_makes_every_group_err_with_the_reason() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,), expected_groups=("indexer",))
    healthy = RawGroup("g", "Stable", 1, {(TOPIC, 0): 0})
    monitor.observe(sample(1.0, (0, 0), [healthy, RawGroup("indexer", "Stable", 1, {})]))
    snapshot = monitor.failed(2.0, "KafkaConnectionError: down")
    assert (snapshot.at, snapshot.error, snapshot.last_success_at) == (
        2.0, "KafkaConnectionError: down", 1.0,
    )  # fmt: skip
    assert [g.group for g in snapshot.groups] == ["g", "indexer"]
    for group in snapshot.groups:
        # Not frozen at the last status: ERR, and nothing claimed about lag or members.
        assert group.status is Status.ERR
        assert group.reason == "sample failed: KafkaConnectionError: down"
        assert (group.lag, group.lag_seconds, group.members, group.partitions) == (
            None, None, None, (),
        )  # fmt: skip
    assert monitor.history(since=0)["g"][-1] == {
        "at": 2.0, "lag": None, "lag_seconds": None, "status": "ERR",
    }  # fmt: skip


def test_failed_sample_before_any_success_lists_the_expected_groups() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,), expected_groups=("a", "b"))
    snapshot = monitor.failed(5.0, "KafkaConnectionError: down")
    assert [(g.group, g.status) for g in snapshot.groups] == [("a", Status.ERR), ("b", Status.ERR)]
    assert snapshot.last_success_at is None


def test_metrics_after_a_failed_sample() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,))
    monitor.observe(sample(100.0, (1, 1), [RawGroup("g", "Stable", 1, {(TOPIC, 0): 0})]))
    monitor.failed(130.0, "KafkaConnectionError: down")
    text = generate_latest(MonitorMetrics(lambda: monitor.latest).registry).decode()
    assert "lagmon_last_sample_timestamp_seconds 130.0" in text
    # Only a successful sample moves this one: LagMonitorNotSampling alerts on it.
    assert "lagmon_last_successful_sample_timestamp_seconds 100.0" in text
    assert 'lagmon_group_status{group="g"} 6.0' in text
    assert "lagmon_group_lag_messages{" not in text
    assert "lagmon_group_members{" not in text


def test_metrics_text_has_labelled_series() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,))
    group = RawGroup("counter", "Stable", 1, {(TOPIC, 0): 4, (TOPIC, 1): 2})
    monitor.observe(sample(100.0, (10, 2), [group], {(TOPIC, 0, 4): 88.0}))
    text = generate_latest(MonitorMetrics(lambda: monitor.latest).registry).decode()
    labels = 'group="counter",partition="0",topic="blog-events"'
    assert f"lagmon_partition_lag_messages{{{labels}}} 6.0" in text
    assert f"lagmon_partition_lag_seconds{{{labels}}} 12.0" in text
    assert f"lagmon_partition_committed_offset{{{labels}}} 4.0" in text
    assert f"lagmon_partition_end_offset{{{labels}}} 10.0" in text
    assert f"lagmon_partition_status{{{labels}}} 0.0" in text
    assert 'lagmon_group_status{group="counter"} 0.0' in text
    assert 'lagmon_group_members{group="counter",state="Stable"} 1.0' in text
    assert "lagmon_last_sample_timestamp_seconds 100.0" in text
    assert "lagmon_last_successful_sample_timestamp_seconds 100.0" in text


def test_metrics_without_a_sample_are_empty_but_valid() -> None:
    text = generate_latest(MonitorMetrics(lambda: None).registry).decode()
    assert "# TYPE lagmon_partition_lag_messages gauge" in text
    assert "lagmon_partition_lag_messages{" not in text
    assert "\nlagmon_last_successful_sample_timestamp_seconds " not in text


def test_cli_table_shows_groups_and_partitions() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,))
    group = RawGroup("indexer", "Empty", 0, {(TOPIC, 0): 4, (TOPIC, 1): 2})
    snapshot = monitor.observe(sample(100.0, (10, 2), [group], {(TOPIC, 0, 4): 58.0}))
    text = render(snapshot.to_json(), partitions=True)
    lines = text.splitlines()
    assert lines[1].split() == ["GROUP", "STATUS", "STATE", "MEMBERS", "LAG", "LAG-SECONDS", "WHY"]
    assert lines[2].split()[:6] == ["indexer", "WARN", "Empty", "0", "6", "42.0"]
    assert lines[2].endswith("STOP if none joins within 2 samples")
    assert "indexer  blog-events  0          4          10   6    42.0" in text
    assert "no consumer group" in render({**snapshot.to_json(), "groups": []}, partitions=False)


def test_cli_table_after_a_failed_sample() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,))
    monitor.observe(sample(100.0, (1, 1), [RawGroup("g", "Stable", 1, {(TOPIC, 0): 0})]))
    text = render(monitor.failed(130.0, "KafkaConnectionError: down").to_json(), partitions=True)
    assert "LAST SAMPLE FAILED: KafkaConnectionError: down (last successful sample: 1970" in text
    row = text.splitlines()[3].split()
    assert row[:6] == ["g", "ERR", "Unknown", "?", "?", "?"]


def test_one_shot_cli_settings_judge_on_two_samples() -> None:
    settings = one_shot_settings(Settings(), 2.0)
    assert (settings.min_observations, settings.stall_after_s) == (2, 2.0)
    assert settings.stop_after_samples == 2


def test_expected_groups_setting_is_a_comma_separated_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().expected_groups == ["counter", "indexer"]
    monkeypatch.setenv("LAGMON_EXPECTED_GROUPS", " counter, indexer,search ")
    assert Settings().expected_groups == ["counter", "indexer", "search"]
    monkeypatch.setenv("LAGMON_EXPECTED_GROUPS", "")
    assert Settings().expected_groups == []


class FlakyReader:
    """Stands in for KafkaLagReader: fails while `down`, else returns the next sample."""

    def __init__(self, samples: list[RawSample]) -> None:
        self.samples = samples
        self.down = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def read(self) -> RawSample:
        if self.down:
            raise ConnectionError("ConnectionError: broker unreachable")
        return self.samples.pop(0)


async def test_sampler_failure_is_err_for_every_group_and_counted() -> None:
    healthy = RawGroup("g", "Stable", 1, {(TOPIC, 0): 0})
    reader = FlakyReader([sample(1.0, (0, 0), [healthy]), sample(9.0, (0, 0), [healthy])])
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,))
    metrics = MonitorMetrics(lambda: monitor.latest)
    sampler = Sampler(reader, monitor, interval_s=1.0, metrics=metrics)  # type: ignore[arg-type]
    assert (await sampler.sample_once()).groups[0].status is Status.OK
    reader.down = True
    failed = [await sampler.sample_once() for _ in range(2)]
    assert all(s.error == "ConnectionError: broker unreachable" for s in failed)
    assert all(s.groups[0].status is Status.ERR for s in failed)
    assert sampler.last_success_at == 1.0
    reader.down = False
    back = await sampler.sample_once()
    assert (back.error, back.groups[0].status, sampler.last_success_at) == (None, Status.OK, 9.0)
    text = generate_latest(metrics.registry).decode()
    assert "lagmon_sample_failures_total 2.0" in text


class HangingReader(FlakyReader):
    """A reader whose first read never answers, as a client stuck on a broker that went away."""

    def __init__(self, samples: list[RawSample]) -> None:
        super().__init__(samples)
        self.hang = True
        self.starts = self.stops = 0

    async def start(self) -> None:
        self.starts += 1

    async def stop(self) -> None:
        self.stops += 1

    async def read(self) -> RawSample:
        if self.hang:
            await asyncio.Event().wait()
        return await super().read()


async def test_a_hung_sample_is_err_and_the_clients_are_rebuilt() -> None:
    healthy = RawGroup("g", "Stable", 1, {(TOPIC, 0): 0})
    reader = HangingReader([sample(9.0, (0, 0), [healthy])])
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,), expected_groups=("g",))
    sampler = Sampler(reader, monitor, interval_s=1.0, sample_timeout_s=0.05)  # type: ignore[arg-type]
    hung = await sampler.sample_once()
    assert hung.error == "the sample did not finish within 0.05 s"
    assert [g.status for g in hung.groups] == [Status.ERR]
    assert (reader.starts, reader.stops) == (1, 1)
    reader.hang = False
    back = await sampler.sample_once()
    # Fresh clients for the next sample, which succeeds.
    assert (back.error, reader.starts, sampler.last_success_at) == (None, 2, 9.0)


def test_sample_timeout_must_exceed_the_request_timeout() -> None:
    with pytest.raises(ValueError, match="sample_timeout_s must exceed request_timeout_s"):
        Settings(request_timeout_s=10, sample_timeout_s=10)

"""From raw samples to snapshots, history, /metrics text and the CLI table (no Kafka)."""

from __future__ import annotations

from prometheus_client import generate_latest

from lagmon.cli import one_shot_settings, render
from lagmon.kafka_reader import RawGroup, RawSample
from lagmon.metrics import MonitorMetrics
from lagmon.monitor import LagMonitor
from lagmon.rules import RuleConfig, Status
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
    for step in range(10):
        at = 100.0 + 5 * step
        end = 10 + step
        dead = RawGroup("dead", "Empty", 0, {(TOPIC, 0): 10, (TOPIC, 1): 0})
        live = RawGroup("live", "Stable", 1, {(TOPIC, 0): end, (TOPIC, 1): 0})
        snapshot = monitor.observe(sample(at, (end, 0), [dead, live], {(TOPIC, 0, 10): 99.0}))
        statuses.append((snapshot.group("dead").status, snapshot.group("live").status))  # type: ignore[union-attr]
    assert [live for _, live in statuses] == [Status.OK] * 10
    dead_statuses = [dead for dead, _ in statuses]
    # 5 s apart; caught up at first, then lag > 0 from the 2nd sample on: unchanged with lag
    # for 10 s at the 4th sample (STALL), for 20 s = the window at the 6th (STOP).
    assert dead_statuses == [Status.OK] * 3 + [Status.STALL] * 2 + [Status.STOP] * 5
    history = monitor.history(since=0)
    assert [p["lag"] for p in history["dead"]] == list(range(10))
    assert history["dead"][-1]["status"] == "STOP"


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


def test_failed_sample_keeps_groups_and_flags_error() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,))
    monitor.observe(sample(1.0, (0, 0), [RawGroup("g", "Stable", 1, {(TOPIC, 0): 0})]))
    snapshot = monitor.failed(2.0, "KafkaConnectionError: down")
    assert snapshot.error == "KafkaConnectionError: down"
    assert [g.group for g in snapshot.groups] == ["g"]


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


def test_metrics_without_a_sample_are_empty_but_valid() -> None:
    text = generate_latest(MonitorMetrics(lambda: None).registry).decode()
    assert "# TYPE lagmon_partition_lag_messages gauge" in text
    assert "lagmon_partition_lag_messages{" not in text


def test_cli_table_shows_groups_and_partitions() -> None:
    monitor = LagMonitor(RULES, history_s=60, topics=(TOPIC,))
    group = RawGroup("indexer", "Empty", 0, {(TOPIC, 0): 4, (TOPIC, 1): 2})
    snapshot = monitor.observe(sample(100.0, (10, 2), [group], {(TOPIC, 0, 4): 58.0}))
    text = render(snapshot.to_json(), partitions=True)
    lines = text.splitlines()
    assert lines[1].split() == ["GROUP", "STATUS", "STATE", "MEMBERS", "LAG", "LAG-SECONDS"]
    assert lines[2].split() == ["indexer", "OK", "Empty", "0", "6", "42.0"]
    assert "indexer  blog-events  0          4          10   6    42.0" in text
    assert "no consumer group" in render({**snapshot.to_json(), "groups": []}, partitions=False)


def test_one_shot_cli_settings_judge_on_two_samples() -> None:
    settings = one_shot_settings(Settings(), 2.0)
    assert (settings.min_observations, settings.stall_after_s) == (2, 2.0)

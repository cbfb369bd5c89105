"""Prometheus metrics, built from the latest snapshot at scrape time (a collector, not global
gauges), so a group that disappears from Kafka disappears from /metrics too."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lagmon.monitor import LagSnapshot
from lagmon.rules import Status

PARTITION_LABELS = ["group", "topic", "partition"]
# Status as a number ordered by severity (the alert rules compare these codes).
STATUS_CODES = {status: status.severity for status in Status}
STATUS_LEGEND = ", ".join(f"{code} {status}" for status, code in STATUS_CODES.items())


class SnapshotCollector(Collector):
    def __init__(self, latest: Callable[[], LagSnapshot | None]) -> None:
        self._latest = latest

    def collect(self) -> Iterator[Metric]:
        snapshot = self._latest()
        lag = GaugeMetricFamily(
            "lagmon_partition_lag_messages",
            "Messages the group has not processed yet (log end - committed offset)",
            labels=PARTITION_LABELS,
        )
        lag_seconds = GaugeMetricFamily(
            "lagmon_partition_lag_seconds",
            "Age of the oldest record the group has not processed (0 when caught up)",
            labels=PARTITION_LABELS,
        )
        committed = GaugeMetricFamily(
            "lagmon_partition_committed_offset",
            "The group's committed offset (absent when it has none)",
            labels=PARTITION_LABELS,
        )
        end = GaugeMetricFamily(
            "lagmon_partition_end_offset",
            "The partition's log-end offset (high watermark)",
            labels=PARTITION_LABELS,
        )
        partition_status = GaugeMetricFamily(
            "lagmon_partition_status",
            f"Burrow-style status: {STATUS_LEGEND}",
            labels=PARTITION_LABELS,
        )
        group_status = GaugeMetricFamily(
            "lagmon_group_status",
            f"The group's status (its worst partition's, or NOTFOUND/ERR): {STATUS_LEGEND}",
            labels=["group"],
        )
        group_lag = GaugeMetricFamily(
            "lagmon_group_lag_messages", "Total lag of the group in messages", labels=["group"]
        )
        group_lag_seconds = GaugeMetricFamily(
            "lagmon_group_lag_seconds",
            "Largest lag in seconds over the group's partitions",
            labels=["group"],
        )
        members = GaugeMetricFamily(
            "lagmon_group_members",
            "Members in the consumer group, labelled with Kafka's group state",
            labels=["group", "state"],
        )
        last_sample = GaugeMetricFamily(
            "lagmon_last_sample_timestamp_seconds",
            "Unix time of the latest sample attempt, successful or not",
        )
        last_success = GaugeMetricFamily(
            "lagmon_last_successful_sample_timestamp_seconds",
            "Unix time of the latest sample that succeeded (absent until one has)",
        )
        if snapshot is not None:
            last_sample.add_metric([], snapshot.at)
            if snapshot.last_success_at is not None:
                last_success.add_metric([], snapshot.last_success_at)
            for group in snapshot.groups:
                group_status.add_metric([group.group], STATUS_CODES[group.status])
                # Unknown after a failed sample: absent rather than a stale number.
                if group.lag is not None:
                    group_lag.add_metric([group.group], group.lag)
                if group.lag_seconds is not None:
                    group_lag_seconds.add_metric([group.group], group.lag_seconds)
                if group.members is not None:
                    members.add_metric([group.group, group.state], group.members)
                for p in group.partitions:
                    labels = [group.group, p.topic, str(p.partition)]
                    lag.add_metric(labels, p.lag)
                    if p.lag_seconds is not None:
                        lag_seconds.add_metric(labels, p.lag_seconds)
                    if p.committed_offset is not None:
                        committed.add_metric(labels, p.committed_offset)
                    end.add_metric(labels, p.log_end_offset)
                    partition_status.add_metric(labels, STATUS_CODES[p.status])
        yield from (
            lag,
            lag_seconds,
            committed,
            end,
            partition_status,
            group_status,
            group_lag,
            group_lag_seconds,
            members,
            last_sample,
            last_success,
        )


class MonitorMetrics:
    """The registry /metrics serves: the snapshot's gauges plus the sampler's own health."""

    def __init__(self, latest: Callable[[], LagSnapshot | None]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(SnapshotCollector(latest))
        self.sample_duration = Histogram(
            "lagmon_sample_duration_seconds",
            "Time to take one sample from Kafka",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.sample_failures = Counter(
            "lagmon_sample_failures",
            "Samples that could not be taken (Kafka unreachable, ...)",
            registry=self.registry,
        )
        self.groups = Gauge(
            "lagmon_groups", "Consumer groups being monitored", registry=self.registry
        )

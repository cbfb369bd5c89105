"""The Prometheus alert rules and the Grafana dashboard under deploy/ are well formed and only
use metrics that exist (a renamed metric would silently blind an alert)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from lagmon.kafka_reader import RawGroup, RawSample
from lagmon.metrics import MonitorMetrics
from lagmon.monitor import LagMonitor
from lagmon.rules import RuleConfig

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
METRIC_NAME = re.compile(r"\b((?:lagmon|blog_consumer)_[a-z_]+)")
# Owned by service_kit's ConsumerMetrics (each consumer's /metrics), not by lagmon.
CONSUMER_METRICS = {
    "blog_consumer_events_processed_total",
    "blog_consumer_events_failed_total",
    "blog_consumer_events_dead_lettered_total",
    "blog_consumer_batch_duration_seconds_bucket",
}


def lagmon_metric_names() -> set[str]:
    monitor = LagMonitor(RuleConfig(60, 30), 60, ("t",))
    monitor.observe(
        RawSample(
            at=1.0,
            partitions={("t", 0): (0, 1)},
            groups=[RawGroup("g", "Stable", 1, {("t", 0): 0})],
            record_times={("t", 0, 0): 0.5},
        )
    )
    metrics = MonitorMetrics(lambda: monitor.latest)
    metrics.sample_duration.observe(0.1)
    metrics.sample_failures.inc()
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}


def test_alert_rules_are_valid_and_use_existing_metrics() -> None:
    document = yaml.safe_load((DEPLOY / "prometheus" / "lagmon-alerts.yml").read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {"ConsumerGroupLagHigh", "ConsumerGroupStalled", "ConsumerGroupStopped"} <= names
    known = lagmon_metric_names()
    for rule in rules:
        assert rule["expr"]
        assert rule["for"]
        assert rule["labels"]["severity"]
        assert rule["annotations"]["summary"]
        used = set(METRIC_NAME.findall(rule["expr"]))
        assert used, rule["alert"]
        assert used <= known, f"{rule['alert']} uses unknown metrics {used - known}"


def test_prometheus_config_loads_the_rules() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert any("lagmon-alerts.yml" in path for path in config["rule_files"])
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"lagmon", "counter", "indexer", "publisher"} <= jobs


def test_grafana_dashboard_uses_existing_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "consumer-lag.json").read_text())
    assert dashboard["uid"]
    assert dashboard["panels"]
    known = lagmon_metric_names() | CONSUMER_METRICS
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used = set(METRIC_NAME.findall(target["expr"]))
            assert used <= known, f"{panel['title']} uses unknown metrics {used - known}"

"""The Prometheus alert rules and the Grafana dashboard under deploy/ are well formed and only
use metrics that exist (a renamed metric would silently blind an alert). promtool's own checks
and the alerts' unit tests are in tests/alerts/."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest

from lagmon.kafka_reader import RawGroup, RawSample
from lagmon.metrics import MonitorMetrics
from lagmon.monitor import LagMonitor
from lagmon.rules import RuleConfig, Status

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
METRIC_NAME = re.compile(r"\b((?:lagmon|blog_consumer|publisher)_[a-z_]+)")
# Owned by service_kit's ConsumerMetrics (each consumer's /metrics), not by lagmon.
CONSUMER_METRICS = {
    "blog_consumer_events_processed_total",
    "blog_consumer_events_failed_total",
    "blog_consumer_events_dead_lettered_total",
    "blog_consumer_batch_duration_seconds_bucket",
}
# The publisher's outbox health, as agreed for wave 2 (PLAN, shared decision 3); the counter is
# queried through its `_total` sample.
PUBLISHER_METRICS = {
    "publisher_outbox_unsent_rows",
    "publisher_outbox_oldest_unsent_age_seconds",
    "publisher_relay_leader",
    "publisher_relay_send_failures_total",
    "publisher_outbox_parked_rows",
}
ALERT_RULES = DEPLOY / "prometheus" / "lagmon-alerts.yml"


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
    document = yaml.safe_load(ALERT_RULES.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert {"ConsumerGroupLagHigh", "ConsumerGroupStalled", "ConsumerGroupStopped"} <= names
    assert {"OutboxBacklogOld", "NoRelayLeader"} <= names
    known = lagmon_metric_names() | PUBLISHER_METRICS
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
    assert [Path(path).name for path in config["rule_files"]] == [ALERT_RULES.name]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"lagmon", "counter", "indexer", "publisher"} <= jobs


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (DEPLOY / "grafana" / "dashboards" / "consumer-lag.json").read_text()
    )
    return loaded


def value_mappings(node: Any) -> list[dict[str, Any]]:
    """Every Grafana value mapping's options anywhere in the dashboard."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if node.get("type") == "value" and isinstance(node.get("options"), dict):
            found.append(node["options"])
        for child in node.values():
            found += value_mappings(child)
    elif isinstance(node, list):
        for child in node:
            found += value_mappings(child)
    return found


def test_grafana_dashboard_uses_existing_metrics() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"]
    assert dashboard["panels"]
    known = lagmon_metric_names() | CONSUMER_METRICS | PUBLISHER_METRICS
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            used = set(METRIC_NAME.findall(target["expr"]))
            assert used <= known, f"{panel['title']} uses unknown metrics {used - known}"


def test_grafana_dashboard_shows_every_status_members_state_and_the_outbox() -> None:
    dashboard = load_dashboard()
    # Every place that maps status codes to names knows every status, with lagmon's codes.
    mappings = [m for m in value_mappings(dashboard) if m.get("0", {}).get("text") == "OK"]
    assert len(mappings) >= 4
    for mapping in mappings:
        names = {int(code): entry["text"] for code, entry in mapping.items()}
        assert names == {status.severity: status.value for status in Status}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert any("lagmon_group_members" in e and "state" in e for e in exprs)
    assert any("lagmon_last_successful_sample_timestamp_seconds" in e for e in exprs)
    used = {name for e in exprs for name in METRIC_NAME.findall(e)}
    assert used >= PUBLISHER_METRICS
    # The reasons are on the lag page (too many values for Prometheus labels): linked.
    assert any(link["url"].startswith("${lagmon_url}") for link in dashboard["links"])

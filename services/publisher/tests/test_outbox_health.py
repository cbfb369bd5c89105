"""The publisher's outbox and relay health metrics: the names the alert rules and the dashboard
use exist in the publisher's registry (they can never drift apart), every replica reports the
backlog (a standby too), and the sample reads the partial indexes, not the table."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from pathlib import Path

import asyncpg
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from blog_testkit import free_port, wait_until
from publisher.app import MIGRATIONS_DIR, SCHEMA
from publisher.metrics import SEND_FAILURE_REASONS, PublisherMetrics
from publisher.relay import send_failure_reason
from publisher.store import OUTBOX_HEALTH_QUERY
from service_kit.migrations import apply_migrations

from .conftest import PublisherFactory, draft, new_author

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
PUBLISHER_METRIC = re.compile(r"\bpublisher_[a-z_]+")
BY_LABELS = re.compile(r"\bby \(([^)]*)\)[^()]*\(?\s*(?:rate\()?(publisher_[a-z_]+)")


def referenced_exprs() -> list[str]:
    """Every PromQL expression of the alert rules and the Grafana dashboards."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "lagmon-alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    for dashboard in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        exprs += re.findall(r'"expr":\s*"((?:[^"\\]|\\.)*)"', dashboard.read_text())
    return exprs


def exported_samples() -> dict[str, set[str]]:
    """Sample name -> its label names, as the publisher's registry exports them at start."""
    metrics = PublisherMetrics()
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def test_every_publisher_metric_the_alerts_and_dashboards_use_is_exported() -> None:
    exprs = referenced_exprs()
    used = {name for expr in exprs for name in PUBLISHER_METRIC.findall(expr)}
    # The alerts' and the dashboard's outbox panels (a vacuous pass would prove nothing).
    assert {
        "publisher_outbox_unsent_rows",
        "publisher_outbox_oldest_unsent_age_seconds",
        "publisher_relay_leader",
        "publisher_relay_send_failures_total",
        "publisher_outbox_parked_rows",
    } <= used
    exported = exported_samples()
    assert used <= set(exported), f"not exported by the publisher: {used - set(exported)}"
    for expr in exprs:
        for labels, name in BY_LABELS.findall(expr):
            wanted = {label.strip() for label in labels.split(",")} - {"instance", "job"}
            assert wanted <= exported[name], f"{expr}: {name} has no label {wanted}"


def test_send_failure_reasons_are_a_fixed_set() -> None:
    from aiokafka import errors

    assert send_failure_reason(errors.KafkaConnectionError()) == "kafka_unreachable"
    assert send_failure_reason(errors.NotEnoughReplicasError()) == "not_enough_replicas"
    assert send_failure_reason(errors.UnknownTopicOrPartitionError()) == "topic_missing"
    assert send_failure_reason(errors.TopicAuthorizationFailedError()) == "authorization"
    assert send_failure_reason(errors.KafkaTimeoutError()) == "timeout"
    assert send_failure_reason(errors.MessageSizeTooLargeError()) == "record_refused"
    assert send_failure_reason(ValueError("?")) == "other"
    exported = exported_samples()
    assert exported["publisher_relay_send_failures_total"] == {"reason"}
    metrics = PublisherMetrics()  # every reason is a series from the start, at 0
    declared = {
        sample.labels["reason"]
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for sample in family.samples
        if sample.name == "publisher_relay_send_failures_total"
    }
    assert declared == set(SEND_FAILURE_REASONS)


def scraped(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in the scrape")


@pytest.mark.integration
async def test_every_replica_reports_the_backlog_and_one_the_leadership(
    publisher_factory: PublisherFactory, database_url: str
) -> None:
    closed = f"127.0.0.1:{free_port()}"  # Kafka unreachable: nothing leaves the outbox
    async with (
        publisher_factory(relay_enabled=True, kafka_bootstrap_servers=closed) as one,
        publisher_factory(relay_enabled=True, kafka_bootstrap_servers=closed) as two,
    ):
        relays = [one.runtime.relay, two.runtime.relay]

        async def one_leader() -> bool:
            return sum(bool(r and r.is_leader) for r in relays) == 1

        await wait_until(one_leader, timeout=15, what="one relay leads")
        author = await new_author(database_url)
        for n in range(3):
            response = await one.client.post("/blogs", json=draft(f"t{n}"), headers=author.headers)
            assert response.status_code == 202
        leader, standby = (one, two) if relays[0] and relays[0].is_leader else (two, one)

        async def failing_to_send() -> bool:
            text = (await leader.client.get("/metrics")).text
            failures = sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "publisher_relay_send_failures_total"
            )
            return failures > 0

        await wait_until(failing_to_send, timeout=30, what="a send failure counted")
        texts = [(await p.client.get("/metrics")).text for p in (leader, standby)]
        for text in texts:
            assert scraped(text, "publisher_outbox_unsent_rows") == 3
            assert 0 < scraped(text, "publisher_outbox_oldest_unsent_age_seconds") < 60
            assert scraped(text, "publisher_outbox_parked_rows") == 0
        assert [scraped(t, "publisher_relay_leader") for t in texts] == [1, 0]
        failures = [
            (sample.labels["reason"], sample.value)
            for family in text_string_to_metric_families(texts[0])
            for sample in family.samples
            if sample.name == "publisher_relay_send_failures_total" and sample.value
        ]
        assert failures, texts[0]
        assert {reason for reason, _ in failures} <= {"kafka_unreachable", "timeout"}, failures


@pytest.mark.integration
async def test_the_outbox_sample_reads_the_partial_indexes_not_the_table(
    database_url: str,
) -> None:
    await apply_migrations(database_url, SCHEMA, MIGRATIONS_DIR)
    db = await asyncpg.connect(database_url)
    try:
        # A long-lived outbox: many sent rows, a few unsent and parked ones.
        await db.execute(
            "INSERT INTO publisher.outbox (event_id, blog_id, version, topic, key, payload,"
            " created_at, sent_at, kafka_partition, kafka_offset)"
            " SELECT gen_random_uuid(), gen_random_uuid(), 1, 't', 'k', 'x',"
            "  now() - interval '1 hour', now(), 0, n FROM generate_series(1, 20000) AS n"
        )
        for minutes, parked in ((5, False), (2, False), (1, True)):
            await db.execute(
                "INSERT INTO publisher.outbox (event_id, blog_id, version, topic, key, payload,"
                " created_at, parked_at) VALUES ($1, $2, 1, 't', 'k', 'x',"
                " now() - make_interval(mins => $3), CASE WHEN $4 THEN now() END)",
                uuid.uuid4(),
                uuid.uuid4(),
                minutes,
                parked,
            )
        await db.execute("ANALYZE publisher.outbox")
        row = await db.fetchrow(OUTBOX_HEALTH_QUERY)
        assert row is not None
        assert (row["unsent"], row["parked"]) == (2, 1)
        assert 300 <= float(row["oldest_age_s"]) < 360
        plan = "\n".join(r[0] for r in await db.fetch(f"EXPLAIN {OUTBOX_HEALTH_QUERY}"))
        assert "Seq Scan" not in plan, plan
        assert "outbox_unsent_idx" in plan, plan
        assert "outbox_parked_idx" in plan, plan
    finally:
        await db.close()


def test_the_dashboard_json_is_valid() -> None:
    for dashboard in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        json.loads(dashboard.read_text())


@pytest.mark.integration
async def test_healthz_fails_once_the_relay_task_died(publisher_factory: PublisherFactory) -> None:
    async with publisher_factory(relay_enabled=True) as running:
        assert (await running.client.get("/healthz")).json() == {"status": "ok"}
        task = running.runtime.relay_task
        assert task is not None
        task.cancel()  # as a bug escaping the relay's loop would end it
        with contextlib.suppress(asyncio.CancelledError):
            await task
        health = await running.client.get("/healthz")
        assert health.status_code == 503
        assert health.json() == {"status": "dead", "relay": "outbox relay task cancelled"}
    async with publisher_factory(relay_enabled=False) as api_only:
        assert (await api_only.client.get("/healthz")).status_code == 200

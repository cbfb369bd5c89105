"""The platform manifests of deploy/k8s/platform: valid against the Kubernetes schemas and the
operators' CRDs, the generated ones in step with their sources (the teams' topics files, the
alert rules), and least privilege as PLAN decision 7 describes it."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.k8s_check import (
    CHARTS,
    KUBERNETES_VERSION,
    NAMESPACES,
    REPO,
    load_documents,
    platform_manifests,
    render_chart,
    validate_object,
)

pytestmark = pytest.mark.k8s

GENERATE = REPO / "deploy" / "k8s" / "generate.py"
ALERT_RULES = REPO / "deploy" / "prometheus" / "lagmon-alerts.yml"
CHART_RULES = REPO / "services" / "lagmon" / "chart" / "files" / "lagmon-alerts.yml"

# What each service does with Kafka (PLAN decision 7), as (resource type, name, operation).
EXPECTED_ACLS = {
    "publisher": {
        ("topic", "blog-events", "Write"),
        # GET /blogs/{id}/status reads these groups' committed offsets.
        ("group", "counter", "Describe"),
        ("group", "indexer", "Describe"),
    },
    "counter": {
        ("topic", "blog-events", "Read"),
        ("group", "counter", "Read"),
        ("topic", "blog-events.counter.dlq", "Write"),
        # Its redrive: the DLQ to its own retry topic, which only this group reads.
        ("topic", "blog-events.counter.dlq", "Read"),
        ("topic", "blog-events.counter.retry", "Read"),
        ("topic", "blog-events.counter.retry", "Write"),
        ("group", "counter-redrive", "Read"),
        # Its rebuild: its own group, deleted once the rebuilt tables are swapped in.
        ("group", "counter-rebuild", "Read"),
        ("group", "counter-rebuild", "Delete"),
    },
    "indexer": {
        ("topic", "blog-events", "Read"),
        ("group", "indexer", "Read"),
        ("topic", "blog-events.indexer.dlq", "Write"),
        # Its redrive: the DLQ to its own retry topic, which only this group reads.
        ("topic", "blog-events.indexer.dlq", "Read"),
        ("topic", "blog-events.indexer.retry", "Read"),
        ("topic", "blog-events.indexer.retry", "Write"),
        ("group", "indexer-redrive", "Read"),
        # Its rebuilds: one group per index built (prefix `indexer-rebuild-`), deleted once swapped.
        ("group", "indexer-rebuild-", "Read"),
        ("group", "indexer-rebuild-", "Delete"),
    },
    "lagmon": {
        ("group", "*", "Describe"),
        ("topic", "*", "Describe"),
        ("topic", "blog-events", "Read"),
    },
}


@pytest.fixture(scope="module")
def platform() -> dict[str, list[dict[str, Any]]]:
    return platform_manifests()


def all_of(platform: dict[str, list[dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [obj for objects in platform.values() for obj in objects if obj["kind"] == kind]


def the(platform: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    (obj,) = all_of(platform, kind)
    return obj


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATE), *args], capture_output=True, text=True, check=False
    )


def test_every_platform_object_is_valid(
    platform: dict[str, list[dict[str, Any]]], crds: Path
) -> None:
    checked = [
        validate_object(obj, name, crds) for name, objects in platform.items() for obj in objects
    ]
    invalid = [
        f"{c.source} {c.kind}/{c.name} [{c.against}]: {c.errors}" for c in checked if not c.ok
    ]
    assert not invalid, "\n".join(invalid)
    against = {c.kind: c.against for c in checked}
    for kind in ("Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "Elasticsearch", "Cluster"):
        assert against[kind].startswith("CRD "), (kind, against[kind])


def test_an_unknown_field_in_a_platform_resource_fails_validation(
    platform: dict[str, list[dict[str, Any]]], crds: Path
) -> None:
    kafka = copy.deepcopy(the(platform, "Kafka"))
    kafka["spec"]["kafka"]["replicas"] = 3  # a v1beta2 field: node pools own replicas in v1
    checked = validate_object(kafka, "kafka.yaml", crds)
    assert not checked.ok
    assert "replicas" in checked.errors[0]


def test_generated_files_are_up_to_date() -> None:
    result = generate("--check")
    assert result.returncode == 0, result.stderr


def test_kafka_topics_are_the_teams_topics_files(platform: dict[str, list[dict[str, Any]]]) -> None:
    declared = {
        topic["name"]: (path.parent.name, topic)
        for path in REPO.glob("services/*/topics.yaml")
        for topic in yaml.safe_load(path.read_text())["topics"]
    }
    assert {"blog-events", "blog-events.counter.dlq", "blog-events.indexer.dlq"} <= set(declared)
    topics = {t["spec"]["topicName"]: t for t in all_of(platform, "KafkaTopic")}
    assert set(topics) == set(declared)
    cluster = the(platform, "Kafka")["metadata"]["name"]
    for name, (owner, topic) in declared.items():
        resource = topics[name]
        assert resource["metadata"]["labels"]["strimzi.io/cluster"] == cluster
        assert resource["metadata"]["labels"]["blog-platform/owner"] == owner
        assert resource["spec"]["partitions"] == topic["partitions"]
        # `auto` on the 3-broker production cluster: RF 3, min ISR 2.
        expected_rf = 3 if topic["replication_factor"] == "auto" else topic["replication_factor"]
        assert resource["spec"]["replicas"] == expected_rf
        for key, value in topic.get("config", {}).items():
            expected = 2 if (key, value) == ("min.insync.replicas", "auto") else value
            assert resource["spec"]["config"][key] == expected, key


def write_repo(root: Path, rules: str, topics: str) -> None:
    (root / "deploy" / "prometheus").mkdir(parents=True)
    (root / "deploy" / "prometheus" / "lagmon-alerts.yml").write_text(rules)
    (root / "deploy" / "k8s" / "platform").mkdir(parents=True)
    shutil.copy(REPO / "deploy/k8s/platform/kafka.yaml", root / "deploy/k8s/platform/kafka.yaml")
    (root / "services" / "team").mkdir(parents=True)
    (root / "services" / "team" / "topics.yaml").write_text(topics)


OTHER_RULES = """\
# Any valid rules file: two groups, a recording rule, an alert without `for`.
groups:
  - name: recorded
    interval: 30s
    rules:
      - record: group:lagmon_partition_lag_seconds:max
        expr: max by (group) (lagmon_partition_lag_seconds)
  - name: alerts
    rules:
      - alert: SomethingLags
        expr: group:lagmon_partition_lag_seconds:max > 60
        labels: {severity: "page"}
        annotations:
          summary: "{{ $labels.group }} lags {{ $value | humanizeDuration }}"
"""


def test_the_generator_follows_any_rules_and_topics_file(tmp_path: Path, crds: Path) -> None:
    write_repo(
        tmp_path,
        OTHER_RULES,
        "topics:\n  - name: orders\n    partitions: 3\n    replication_factor: 2\n"
        "    config: {min.insync.replicas: auto, retention.ms: '1000'}\n",
    )
    result = generate("--repo", str(tmp_path))
    assert result.returncode == 0, result.stderr
    copied = (tmp_path / "services/lagmon/chart/files/lagmon-alerts.yml").read_text()
    assert yaml.safe_load(copied) == yaml.safe_load(OTHER_RULES)
    (topic,) = load_documents((tmp_path / "deploy/k8s/platform/kafka-topics.yaml").read_text())
    assert topic["spec"] == {
        "topicName": "orders",
        "partitions": 3,
        "replicas": 2,
        "config": {"min.insync.replicas": 2, "retention.ms": "1000"},
    }
    assert validate_object(topic, "generated", crds).ok
    assert generate("--repo", str(tmp_path), "--check").returncode == 0
    # A source edit makes the committed copy stale, and --check says so.
    (tmp_path / "deploy/prometheus/lagmon-alerts.yml").write_text(OTHER_RULES + "\n# edited\n")
    stale = generate("--repo", str(tmp_path), "--check")
    assert stale.returncode == 1
    assert "lagmon-alerts.yml" in stale.stderr


@pytest.mark.parametrize(
    ("topics", "message"),
    [
        ("topics:\n  - name: t\n    partitions: 0\n", "partitions"),
        ("topics:\n  - name: t\n    partitions: 1\n    replication_factor: many\n", "replication"),
        ("topics:\n  - name: t\n    partitions: 1\n    retention: 1\n", "unknown fields"),
        ("topic: []\n", "topics"),
    ],
)
def test_the_generator_refuses_a_malformed_topics_file(
    tmp_path: Path, topics: str, message: str
) -> None:
    write_repo(tmp_path, OTHER_RULES, topics)
    result = generate("--repo", str(tmp_path))
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.usefixtures("helm_binary")
def test_the_lagmon_prometheus_rule_is_the_alert_rules_file(crds: Path) -> None:
    source = yaml.safe_load(ALERT_RULES.read_text())
    assert yaml.safe_load(CHART_RULES.read_text()) == source
    for values in ("default", "production"):
        (rule,) = [o for o in render_chart("lagmon", values) if o["kind"] == "PrometheusRule"]
        assert rule["spec"]["groups"] == source["groups"]
        assert validate_object(rule, "lagmon", crds).ok


def test_the_lagmon_chart_renders_any_rules_file(
    tmp_path: Path, crds: Path, helm_binary: Path
) -> None:
    chart = tmp_path / "lagmon-chart"
    shutil.copytree(REPO / "services" / "lagmon" / "chart", chart)
    (chart / "files" / "lagmon-alerts.yml").write_text(OTHER_RULES)
    output = subprocess.run(
        [str(helm_binary), "template", "lagmon", str(chart), "--kube-version", KUBERNETES_VERSION],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (rule,) = [o for o in load_documents(output) if o["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load(OTHER_RULES)["groups"]
    assert validate_object(rule, "lagmon", crds).ok


def test_kafka_is_a_three_node_kraft_cluster_with_scram_and_acls(
    platform: dict[str, list[dict[str, Any]]],
) -> None:
    kafka = the(platform, "Kafka")
    pool = the(platform, "KafkaNodePool")
    assert kafka["apiVersion"] == pool["apiVersion"] == "kafka.strimzi.io/v1"
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert pool["spec"]["replicas"] == 3
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    spec = kafka["spec"]["kafka"]
    assert spec["version"].startswith("4.1.")
    (listener,) = spec["listeners"]
    assert listener["authentication"]["type"] == "scram-sha-512"
    assert listener["tls"] is True
    assert spec["authorization"]["type"] == "simple"
    assert spec["config"]["min.insync.replicas"] == 2
    assert spec["config"]["default.replication.factor"] == 3
    assert spec["config"]["auto.create.topics.enable"] is False
    (peer,) = listener["networkPolicyPeers"]
    (expression,) = peer["namespaceSelector"]["matchExpressions"]
    assert set(expression["values"]) == {*NAMESPACES.values(), "keda"}


def acls_of(user: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (acl["resource"]["type"], acl["resource"]["name"], operation)
        for acl in user["spec"]["authorization"]["acls"]
        for operation in acl["operations"]
        if acl.get("type", "allow") == "allow"
    }


def test_one_kafka_user_per_service_with_exactly_its_acls(
    platform: dict[str, list[dict[str, Any]]],
) -> None:
    users = {u["metadata"]["name"]: u for u in all_of(platform, "KafkaUser")}
    assert set(users) == set(CHARTS)
    topics = {t["spec"]["topicName"] for t in all_of(platform, "KafkaTopic")}
    for name, user in users.items():
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        acls = acls_of(user)
        assert acls == EXPECTED_ACLS[name], name
        for resource_type, resource, operation in acls:
            # Delete only on its own rebuild groups (a finished rebuild removes its group).
            own_rebuild = resource_type == "group" and resource.startswith(f"{name}-rebuild")
            assert operation not in {"All", "Create", "Alter", "AlterConfigs"}
            assert operation != "Delete" or own_rebuild, (name, resource, operation)
            assert resource_type != "cluster"
            if resource_type == "topic" and resource != "*":
                assert resource in topics, f"{name}: ACL on undeclared topic {resource}"
        for acl in user["spec"]["authorization"]["acls"]:
            # Literal names, but for the indexer's rebuild groups (one per index version).
            pattern = acl["resource"].get("patternType", "literal")
            assert pattern == "literal" or acl["resource"]["name"] == "indexer-rebuild-", acl


@pytest.mark.usefixtures("helm_binary")
@pytest.mark.parametrize("chart", CHARTS)
def test_each_chart_uses_its_own_kafka_identity_and_the_platforms_addresses(
    platform: dict[str, list[dict[str, Any]]], chart: str
) -> None:
    kafka = the(platform, "Kafka")
    deployment = next(o for o in render_chart(chart) if o["kind"] == "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    prefix = chart.upper()
    bootstrap = env[f"{prefix}_KAFKA_BOOTSTRAP_SERVERS"]["value"]
    name, namespace = kafka["metadata"]["name"], kafka["metadata"]["namespace"]
    port = kafka["spec"]["kafka"]["listeners"][0]["port"]
    assert bootstrap == f"{name}-kafka-bootstrap.{namespace}.svc:{port}"
    secret = env[f"{prefix}_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
    assert secret == f"{chart}-kafka"  # the copy of the KafkaUser `<chart>`'s Secret
    group = env.get(f"{prefix}_GROUP_ID", {}).get("value")
    if group:
        users = {u["metadata"]["name"]: u for u in all_of(platform, "KafkaUser")}
        assert ("group", group, "Read") in acls_of(users[chart])


def test_postgres_roles_own_only_their_schemas(platform: dict[str, list[dict[str, Any]]]) -> None:
    cluster = the(platform, "Cluster")
    roles = {role["name"]: role for role in cluster["spec"]["managed"]["roles"]}
    assert set(roles) == {"publisher", "counter"}
    sql = [s.strip() for s in cluster["spec"]["bootstrap"]["initdb"]["postInitApplicationSQL"]]
    for name, role in roles.items():
        assert role["login"] is True
        assert not role.get("superuser")
        assert not role.get("createdb")
        assert not role.get("createrole")
        assert not role.get("bypassrls")
        assert role["passwordSecret"]["name"] == f"blog-db-{name}"
        assert f"CREATE SCHEMA {name} AUTHORIZATION {name}" in sql
        assert f"CREATE ROLE {name} NOLOGIN" in sql
    assert "REVOKE ALL ON SCHEMA public FROM PUBLIC" in sql
    database = cluster["spec"]["bootstrap"]["initdb"]["database"]
    assert f"REVOKE ALL ON DATABASE {database} FROM PUBLIC" in sql
    # Nobody but the bootstrap may create schemas: no CREATE on the database for the roles.
    assert not [s for s in sql if re.match(r"GRANT .*CREATE.* ON DATABASE", s)]


@pytest.mark.usefixtures("helm_binary")
def test_elasticsearch_gives_the_indexer_its_indices_only(
    platform: dict[str, list[dict[str, Any]]],
) -> None:
    es = the(platform, "Elasticsearch")
    assert es["spec"]["version"].startswith("8.19.")
    roles_secret = next(
        s for s in all_of(platform, "Secret") if s["metadata"]["name"] == "blog-search-roles"
    )
    roles = yaml.safe_load(roles_secret["stringData"]["roles.yml"])
    assert set(roles) == {"blog-indexer"}
    (indices,) = roles["blog-indexer"]["indices"]
    alias = next(
        e["value"]
        for e in next(o for o in render_chart("indexer") if o["kind"] == "Deployment")["spec"][
            "template"
        ]["spec"]["containers"][0]["env"]
        if e["name"] == "INDEXER_INDEX_ALIAS"
    )
    assert alias in indices["names"]
    assert f"{alias}-*" in indices["names"]
    assert "all" not in indices["privileges"]
    assert roles["blog-indexer"]["cluster"] == ["monitor"]
    assert [r["secretName"] for r in es["spec"]["auth"]["roles"]] == ["blog-search-roles"]


def test_no_secret_values_are_committed(platform: dict[str, list[dict[str, Any]]]) -> None:
    for secret in all_of(platform, "Secret"):
        assert "data" not in secret
        for key, value in secret.get("stringData", {}).items():
            assert not re.search(r"(?i)password\s*[:=]", value), key

"""Each team's Helm chart, rendered with its default and its production values: helm lint, every
object valid (Kubernetes schemas / CRDs), and what a platform review asks of a workload."""

from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

import counter.__main__
import lagmon.__main__
import publisher.__main__
import publisher.app
from counter.settings import Settings as CounterSettings
from indexer.settings import IndexerSettings
from lagmon.settings import Settings as LagmonSettings
from publisher.settings import PublisherSettings
from service_kit.background import DEFAULT_STOP_TIMEOUT_S
from service_kit.serving import run_http_service
from tests.deploy.k8s_check import (
    CHARTS,
    REPO,
    VALUES_SETS,
    HelmError,
    lint_chart,
    render_chart,
    validate_object,
)

pytestmark = [pytest.mark.k8s, pytest.mark.usefixtures("helm_binary")]

CASES = [(chart, values) for chart in CHARTS for values in VALUES_SETS]
CASE_IDS = [f"{chart}-{values}" for chart, values in CASES]
CONSUMERS = ("counter", "indexer")
MIGRATING = ("publisher", "counter", "indexer")
PORTS = {"publisher": 8000, "counter": 8001, "indexer": 8002, "lagmon": 8003}
SETTINGS: dict[str, type[BaseSettings]] = {
    "publisher": PublisherSettings,
    "counter": CounterSettings,
    "indexer": IndexerSettings,
    "lagmon": LagmonSettings,
}
# Env names the charts pass that no setting reads yet (none: the Kafka SASL/TLS settings exist,
# service_kit.settings.KafkaClientSettings). A name here fails the test once its setting exists.
PENDING_SETTINGS: set[str] = set()
# Measured RSS in MB (publisher; counter and indexer after a 1M-event drain; lagmon sampling a
# live cluster: deploy/k8s/README.md).
MEASURED_RSS_MB = {"publisher": 73, "counter": 86, "indexer": 109, "lagmon": 65}
# Egress each chart's serving pods need, by port: DNS, Kafka, and PostgreSQL or Elasticsearch.
EGRESS_PORTS = {
    "publisher": {53, 9093, 5432},
    "counter": {53, 9093, 5432},
    "indexer": {53, 9093, 9200},
    "lagmon": {53, 9093},
}
MIGRATE_EGRESS_PORTS = {"publisher": {53, 5432}, "counter": {53, 5432}, "indexer": {53, 9200}}


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, str], list[dict[str, Any]]]:
    return {(chart, values): render_chart(chart, values) for chart, values in CASES}


def objects_of(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [o for o in objects_of(objects, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {len(found)}"
    return found[0]


def hook_annotations(obj: dict[str, Any]) -> dict[str, str]:
    annotations: dict[str, str] = obj["metadata"].get("annotations", {})
    return annotations


def server(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        obj["spec"]["template"]["spec"] for obj in objects if obj["kind"] in ("Deployment", "Job")
    ]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container["env"]}


def quantity_bytes(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(value))
    assert match, value
    return float(match.group(1)) * units.get(match.group(2), 1)


@pytest.mark.parametrize(("chart", "values"), CASES, ids=CASE_IDS)
def test_helm_lint_passes(chart: str, values: str) -> None:
    output = lint_chart(chart, values)
    assert "0 chart(s) failed" in output


@pytest.mark.parametrize(("chart", "values"), CASES, ids=CASE_IDS)
def test_every_rendered_object_is_valid(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], crds: Path, chart: str, values: str
) -> None:
    checked = [validate_object(obj, f"{chart}/{values}", crds) for obj in rendered[chart, values]]
    assert checked
    invalid = [f"{c.kind}/{c.name} [{c.against}]: {c.errors}" for c in checked if not c.ok]
    assert not invalid, "\n".join(invalid)
    custom = {c.kind: c.against for c in checked if not c.against.startswith("Kubernetes")}
    for kind in ("ScaledObject", "ServiceMonitor", "PrometheusRule"):
        if kind in custom:
            assert custom[kind].startswith("CRD "), (kind, custom[kind])


@pytest.mark.parametrize(("chart", "values"), CASES, ids=CASE_IDS)
def test_the_workload_objects_are_there(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], chart: str, values: str
) -> None:
    objects = rendered[chart, values]
    deployment = server(objects)
    service = one(objects, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == PORTS[chart]
    account = one(objects, "ServiceAccount", chart)
    assert account["automountServiceAccountToken"] is False
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    policy = one(objects, "NetworkPolicy", chart)
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert set(spread) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    if values == "production":
        assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
        assert objects_of(objects, "ServiceMonitor")


@pytest.mark.parametrize(("chart", "values"), CASES, ids=CASE_IDS)
def test_pods_are_non_root_read_only_and_without_capabilities(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], chart: str, values: str
) -> None:
    for pod in pod_specs(rendered[chart, values]):
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts_by_volume = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp
            assert "emptyDir" in mounts_by_volume[tmp[0]["name"]]
            assert container["resources"]["requests"]["memory"]
            assert container["resources"]["limits"]["memory"]


@pytest.mark.parametrize(("chart", "values"), CASES, ids=CASE_IDS)
def test_probes_and_resources(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], chart: str, values: str
) -> None:
    container = server(rendered[chart, values])["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"] == [
        {"name": "http", "containerPort": PORTS[chart], "protocol": "TCP"}
    ]
    rss = MEASURED_RSS_MB[chart] * 1e6
    request = quantity_bytes(container["resources"]["requests"]["memory"])
    limit = quantity_bytes(container["resources"]["limits"]["memory"])
    assert rss <= request < limit
    assert limit >= 1.5 * rss, "a limit that close to the measured RSS would OOM-kill"


def graceful_stop_s(chart: str) -> float:
    """The service's own worst-case graceful stop after SIGTERM, from the code's constants:
    uvicorn's graceful shutdown of in-flight requests, then the lifespan's stop of the consumer
    (finish the batch, commit, leave the group) or relay or sampler."""
    default_http = inspect.signature(run_http_service).parameters["graceful_timeout_s"].default
    if chart == "counter":
        return counter.__main__.GRACEFUL_SHUTDOWN_S + DEFAULT_STOP_TIMEOUT_S
    if chart == "indexer":
        return float(default_http) + DEFAULT_STOP_TIMEOUT_S
    if chart == "publisher":
        http = re.search(r"graceful_timeout_s=(\d+)", inspect.getsource(publisher.__main__.serve))
        relay = re.search(r"wait_for\(relay_task, ([\d.]+)\)", inspect.getsource(publisher.app))
        assert http
        assert relay
        return float(http.group(1)) + float(relay.group(1))
    http = re.search(r"graceful_timeout_s=(\d+)", inspect.getsource(lagmon.__main__.main))
    assert http
    request_timeout = LagmonSettings.model_fields["request_timeout_s"].default
    return float(http.group(1)) + float(request_timeout)


@pytest.mark.parametrize(("chart", "values"), CASES, ids=CASE_IDS)
def test_grace_period_outlasts_the_graceful_stop(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], chart: str, values: str
) -> None:
    pod = server(rendered[chart, values])["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    closing_s = 2  # closing pools and clients after the stop
    needed = pre_stop + graceful_stop_s(chart) + closing_s
    assert pod["terminationGracePeriodSeconds"] >= needed + 5, (
        f"grace {pod['terminationGracePeriodSeconds']} s < preStop {pre_stop} + stop "
        f"{graceful_stop_s(chart)} + close {closing_s} + 5 s margin"
    )


@pytest.mark.parametrize(("chart", "values"), CASES, ids=CASE_IDS)
def test_env_names_are_the_settings_the_service_reads(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], chart: str, values: str
) -> None:
    fields = set(SETTINGS[chart].model_fields)
    assert not PENDING_SETTINGS & fields, "a pending setting exists now: drop it from the list"
    prefix = f"{chart.upper()}_"
    for pod in pod_specs(rendered[chart, values]):
        for container in pod["containers"]:
            env = env_of(container)
            for name, item in env.items():
                if name == "SSL_CERT_FILE" and chart == "indexer":
                    continue  # Python's trust store: ECK's CA (see the chart's _helpers.tpl)
                assert name.startswith(prefix), name
                field = name.removeprefix(prefix).lower()
                assert field in fields | PENDING_SETTINGS, f"{name}: no such setting"
                assert "value" in item or "valueFrom" in item
            for secret in ("DATABASE_URL", "ES_URL", "KAFKA_SASL_PASSWORD"):
                if f"{prefix}{secret}" in env:
                    assert "secretKeyRef" in env[f"{prefix}{secret}"]["valueFrom"], secret


@pytest.mark.parametrize(("chart", "values"), CASES, ids=CASE_IDS)
def test_migrations_run_in_a_hook_job_not_at_start(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], chart: str, values: str
) -> None:
    objects = rendered[chart, values]
    jobs = objects_of(objects, "Job")
    if chart not in MIGRATING:
        assert not jobs
        return
    job = one(objects, "Job", "-migrate")
    annotations = hook_annotations(job)
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["migrate"]
    assert (
        container["image"] == server(objects)["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    # What the Job's pod needs exists before it: hooks with a lower weight.
    for kind in ("ServiceAccount", "NetworkPolicy"):
        dependency = one(objects, kind, "-migrate")
        assert int(hook_annotations(dependency)["helm.sh/hook-weight"]) < int(
            annotations["helm.sh/hook-weight"]
        )
    serving_env = env_of(server(objects)["spec"]["template"]["spec"]["containers"][0])
    assert serving_env[f"{chart.upper()}_MIGRATE_ON_START"]["value"] == "false"


def test_without_the_hook_job_the_service_migrates_at_start() -> None:
    objects = render_chart("counter", set_values=["migrations.hookJob=false"])
    assert not objects_of(objects, "Job")
    env = env_of(server(objects)["spec"]["template"]["spec"]["containers"][0])
    assert env["COUNTER_MIGRATE_ON_START"]["value"] == "true"


def egress_ports(policy: dict[str, Any]) -> set[int]:
    return {port["port"] for rule in policy["spec"].get("egress", []) for port in rule["ports"]}


@pytest.mark.parametrize(("chart", "values"), CASES, ids=CASE_IDS)
def test_network_policies_allow_only_what_the_service_talks_to(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], chart: str, values: str
) -> None:
    objects = rendered[chart, values]
    policy = one(objects, "NetworkPolicy", chart)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert egress_ports(policy) == EGRESS_PORTS[chart]
    for rule in policy["spec"]["egress"]:
        assert rule["to"], "an egress rule without peers allows every destination"
        for peer in rule["to"]:
            assert "ipBlock" not in peer
            assert peer["namespaceSelector"]["matchLabels"]
            assert peer["podSelector"]["matchLabels"]
    for rule in policy["spec"]["ingress"]:
        assert rule["from"], "an ingress rule without peers admits everyone"
        assert [p["port"] for p in rule["ports"]] == ["http"]
    prometheus = [
        peer
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
        if peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
        == "prometheus"
    ]
    assert prometheus, "Prometheus must reach /metrics"
    if chart in MIGRATING:
        migrate = one(objects, "NetworkPolicy", "-migrate")
        assert "ingress" not in migrate["spec"]
        assert egress_ports(migrate) == MIGRATE_EGRESS_PORTS[chart]


def topic_partitions(name: str) -> int:
    for path in REPO.glob("services/*/topics.yaml"):
        for topic in yaml.safe_load(path.read_text())["topics"]:
            if topic["name"] == name:
                return int(topic["partitions"])
    raise AssertionError(f"topic {name} is declared in no topics file")


@pytest.mark.parametrize("chart", CONSUMERS)
def test_keda_scales_on_the_groups_own_lag(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], chart: str
) -> None:
    objects = rendered[chart, "production"]
    scaled = one(objects, "ScaledObject")
    deployment = server(objects)
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
    prefix = chart.upper()
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert metadata["consumerGroup"] == env[f"{prefix}_GROUP_ID"]["value"] == chart
    assert metadata["topic"] == env[f"{prefix}_TOPIC"]["value"]
    assert metadata["bootstrapServers"] == env[f"{prefix}_KAFKA_BOOTSTRAP_SERVERS"]["value"]
    assert scaled["spec"]["maxReplicaCount"] <= topic_partitions(metadata["topic"])
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert int(metadata["lagThreshold"]) > int(metadata["activationLagThreshold"]) > 0
    assert metadata["sasl"] == "scram_sha512"
    assert metadata["tls"] == "enable"
    auth = one(objects, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {
        "username",
        "password",
        "ca",
    }
    # Default values: no KEDA, a fixed replica count.
    assert not objects_of(rendered[chart, "default"], "ScaledObject")
    assert server(rendered[chart, "default"])["spec"]["replicas"] == 1


def test_a_broken_value_fails_validation(crds: Path) -> None:
    # The chart's values.schema.json stops it first ...
    with pytest.raises(HelmError, match="replicaCount"):
        render_chart("counter", set_values=["replicaCount=three"])
    # ... and without it the Kubernetes schema check does.
    objects = render_chart(
        "counter", set_values=["replicaCount=three"], extra=["--skip-schema-validation"]
    )
    checked = validate_object(server(objects), "counter", crds)
    assert not checked.ok
    assert any(error.startswith("spec.replicas:") for error in checked.errors), checked.errors


def test_an_unknown_field_in_a_custom_resource_fails_validation(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], crds: Path
) -> None:
    scaled = copy.deepcopy(one(rendered["counter", "production"], "ScaledObject"))
    assert validate_object(scaled, "counter", crds).ok
    scaled["spec"]["maxReplicas"] = 6  # the field is maxReplicaCount: the API server prunes it
    checked = validate_object(scaled, "counter", crds)
    assert not checked.ok
    assert "maxReplicas" in checked.errors[0]

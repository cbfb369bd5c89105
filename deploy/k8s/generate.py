"""Generates the deploy artefacts that have another file as their one source of truth:

- deploy/k8s/platform/kafka-topics.yaml: a Strimzi KafkaTopic per topic of the teams' topics files
  (services/*/topics.yaml, PLAN decision 1), `auto` resolved for the brokers of the KafkaNodePools
  in deploy/k8s/platform/kafka.yaml;
- services/lagmon/chart/files/lagmon-alerts.yml: the alert rules of deploy/prometheus/, which the
  lagmon chart's PrometheusRule embeds (a chart cannot read files outside its folder).

`python deploy/k8s/generate.py` writes them; `--check` writes nothing and exits 1 when a committed
file differs from what its source gives (tests/deploy checks that too).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
KAFKA_MANIFEST = Path("deploy/k8s/platform/kafka.yaml")
KAFKA_TOPICS = Path("deploy/k8s/platform/kafka-topics.yaml")
ALERT_RULES = Path("deploy/prometheus/lagmon-alerts.yml")
LAGMON_CHART_RULES = Path("services/lagmon/chart/files/lagmon-alerts.yml")

AUTO = "auto"
TOPIC_FIELDS = {"name", "partitions", "replication_factor", "config"}


class TopicsFileError(ValueError):
    """A topics file that does not follow the format of PLAN decision 1."""


@dataclass(frozen=True)
class TopicDecl:
    owner: str  # the service folder whose topics file declares it
    name: str
    partitions: int
    replication_factor: int | str  # an integer or "auto"
    config: Mapping[str, Any]


def load_topics_file(path: Path, owner: str) -> list[TopicDecl]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("topics"), list):
        raise TopicsFileError(f"{path}: expected a mapping with a `topics` list")
    topics = []
    for index, entry in enumerate(document["topics"]):
        where = f"{path}: topics[{index}]"
        if not isinstance(entry, dict):
            raise TopicsFileError(f"{where}: expected a mapping")
        unknown = set(entry) - TOPIC_FIELDS
        if unknown:
            raise TopicsFileError(f"{where}: unknown fields {sorted(unknown)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise TopicsFileError(f"{where}: `name` must be a non-empty string")
        partitions = entry.get("partitions")
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise TopicsFileError(f"{where} ({name}): `partitions` must be an integer >= 1")
        replication = entry.get("replication_factor", AUTO)
        if replication != AUTO and (
            not isinstance(replication, int) or isinstance(replication, bool) or replication < 1
        ):
            raise TopicsFileError(
                f"{where} ({name}): `replication_factor` must be `auto` or an integer >= 1"
            )
        config = entry.get("config") or {}
        if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
            raise TopicsFileError(f"{where} ({name}): `config` must be a mapping of names")
        topics.append(TopicDecl(owner, name, partitions, replication, config))
    return topics


def declared_topics(repo: Path) -> list[TopicDecl]:
    """Every team's topics, in service then file order; a topic declared twice is an error."""
    topics: list[TopicDecl] = []
    for path in sorted(repo.glob("services/*/topics.yaml")):
        topics += load_topics_file(path, owner=path.parent.name)
    seen: dict[str, str] = {}
    for topic in topics:
        if topic.name in seen:
            raise TopicsFileError(
                f"topic {topic.name} is declared by both {seen[topic.name]} and {topic.owner}"
            )
        seen[topic.name] = topic.owner
    return topics


def manifests(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def broker_count(kafka_manifest: Path) -> tuple[str, int]:
    """The Kafka cluster's name and how many brokers its node pools run."""
    docs = manifests(kafka_manifest)
    clusters = [doc["metadata"]["name"] for doc in docs if doc["kind"] == "Kafka"]
    if len(clusters) != 1:
        raise ValueError(f"{kafka_manifest}: expected one Kafka resource, found {clusters}")
    brokers = sum(
        int(doc["spec"]["replicas"])
        for doc in docs
        if doc["kind"] == "KafkaNodePool" and "broker" in doc["spec"]["roles"]
    )
    if brokers < 1:
        raise ValueError(f"{kafka_manifest}: no KafkaNodePool with the broker role")
    return clusters[0], brokers


def resolve_replication(value: int | str, brokers: int) -> int:
    return min(3, brokers) if value == AUTO else int(value)


def resolve_config(config: Mapping[str, Any], brokers: int) -> dict[str, Any]:
    resolved = dict(config)
    if resolved.get("min.insync.replicas") == AUTO:
        resolved["min.insync.replicas"] = 2 if brokers >= 3 else 1
    autos = [key for key, value in resolved.items() if value == AUTO]
    if autos:
        raise TopicsFileError(f"`auto` is only defined for min.insync.replicas, not {autos}")
    return resolved


def kafka_topic(topic: TopicDecl, cluster: str, namespace: str, brokers: int) -> dict[str, Any]:
    return {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaTopic",
        "metadata": {
            # Topic names may hold dots, which resource names allow; spec.topicName keeps the
            # Kafka name explicit anyway.
            "name": topic.name,
            "namespace": namespace,
            "labels": {
                "strimzi.io/cluster": cluster,
                "app.kubernetes.io/part-of": "blog-platform",
                "app.kubernetes.io/managed-by": "deploy-k8s-generate",
                "blog-platform/owner": topic.owner,
            },
        },
        "spec": {
            "topicName": topic.name,
            "partitions": topic.partitions,
            "replicas": resolve_replication(topic.replication_factor, brokers),
            "config": resolve_config(topic.config, brokers),
        },
    }


def render_kafka_topics(repo: Path) -> str:
    kafka = manifests(repo / KAFKA_MANIFEST)
    namespace = next(doc for doc in kafka if doc["kind"] == "Kafka")["metadata"]["namespace"]
    cluster, brokers = broker_count(repo / KAFKA_MANIFEST)
    header = (
        "# GENERATED by `make k8s-generate` (deploy/k8s/generate.py) from\n"
        f"# services/*/topics.yaml; `auto` resolved for the {brokers} brokers of\n"
        f"# {KAFKA_MANIFEST}. Do not edit: change the owning team's topics.yaml and regenerate.\n"
    )
    documents = [
        yaml.safe_dump(kafka_topic(topic, cluster, namespace, brokers), sort_keys=False)
        for topic in declared_topics(repo)
    ]
    return header + "---\n".join(documents)


def render_lagmon_rules(repo: Path) -> str:
    source = (repo / ALERT_RULES).read_text(encoding="utf-8")
    document = yaml.safe_load(source)
    if not isinstance(document, dict) or not isinstance(document.get("groups"), list):
        raise ValueError(f"{ALERT_RULES}: expected a Prometheus rules file with `groups`")
    header = (
        f"# GENERATED by `make k8s-generate`: a copy of {ALERT_RULES}, which the lagmon chart's\n"
        "# PrometheusRule embeds. Do not edit: change the source and regenerate.\n"
    )
    return header + source


def generated_files(repo: Path) -> dict[Path, str]:
    return {
        KAFKA_TOPICS: render_kafka_topics(repo),
        LAGMON_CHART_RULES: render_lagmon_rules(repo),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report out-of-date files")
    parser.add_argument("--repo", type=Path, default=REPO)
    args = parser.parse_args(argv)
    stale = 0
    for relative, content in generated_files(args.repo).items():
        path = args.repo / relative
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == content:
            continue
        if args.check:
            stale += 1
            sys.stderr.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    content.splitlines(keepends=True),
                    f"{relative} (committed)",
                    f"{relative} (generated)",
                )
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
            print(f"wrote {relative}")
    if stale:
        print(f"{stale} generated file(s) out of date: run `make k8s-generate`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

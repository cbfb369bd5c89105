"""Topics as code, the pure part: reading a topics file, resolving `auto`, planning."""

from __future__ import annotations

from pathlib import Path

import pytest

from service_kit.topics import (
    AddPartitions,
    AlterConfigs,
    CreateTopic,
    TopicsFileError,
    TopicSpec,
    TopicState,
    dead_letter_topic,
    default_topics_file,
    load_topics_file,
    plan_topics,
    resolve,
    topic_specs,
)

DECLARED = TopicSpec(
    name="blog-events",
    partitions=6,
    replication_factor="auto",
    config={"min.insync.replicas": "auto", "cleanup.policy": "delete", "retention.ms": "604800000"},
)


def existing(partitions: int = 6, replication: int = 3, **config: str) -> dict[str, TopicState]:
    values = {"min.insync.replicas": "2", "cleanup.policy": "delete", "retention.ms": "604800000"}
    values.update({key.replace("_", "."): value for key, value in config.items()})
    return {"blog-events": TopicState("blog-events", partitions, replication, values)}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topics.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_topics_file_is_read_with_values_as_kafka_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
topics:
  - name: blog-events
    partitions: 6
    replication_factor: auto
    config:
      min.insync.replicas: auto
      retention.ms: 604800000
      unclean.leader.election.enable: false
  - name: other
    partitions: 1
    replication_factor: 2
""",
    )
    [blog_events, other] = load_topics_file(path).topics
    assert blog_events.config == {
        "min.insync.replicas": "auto",
        "retention.ms": "604800000",
        "unclean.leader.election.enable": "false",
    }
    assert (other.partitions, other.replication_factor, other.config) == (1, 2, {})


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("topics: []", "topics: List should have at least 1 item"),
        ("topics:\n  - name: a\n    partitions: 0", "topics.0.partitions"),
        ("topics:\n  - name: a b\n    partitions: 1", "topics.0.name"),
        (
            "topics:\n  - name: a\n    partitions: 1\n    replication_factor: three",
            "must be 'auto' or a number of copies (got 'three')",
        ),
        ("topics:\n  - name: a\n    partitions: 1\n    partitons: 2", "partitons"),
        ("topics:\n  - {name: a, partitions: 1}\n  - {name: a, partitions: 2}", "declared twice"),
        (
            "topics:\n  - name: a\n    partitions: 1\n    config: {retention.ms: auto}",
            "only meaningful for min.insync.replicas",
        ),
        ("topics: [", "not valid YAML"),
    ],
)
def test_a_bad_topics_file_is_refused_naming_the_file_and_the_field(
    tmp_path: Path, text: str, complaint: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TopicsFileError, match=str(path)) as raised:
        load_topics_file(path)
    assert complaint in str(raised.value)


def test_a_missing_topics_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(TopicsFileError, match="cannot read"):
        load_topics_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("brokers", "replication", "min_insync"), [(1, 1, "1"), (2, 2, "1"), (3, 3, "2"), (5, 3, "2")]
)
def test_auto_is_min_3_brokers_copies_and_2_in_sync_from_3_copies(
    brokers: int, replication: int, min_insync: str
) -> None:
    resolved = resolve(DECLARED, brokers, None)
    assert resolved.replication_factor == replication
    assert resolved.config["min.insync.replicas"] == min_insync


def test_auto_keeps_an_existing_topics_copies_while_a_broker_is_down() -> None:
    # 2 live brokers of 3: auto must not ask for 2 copies (a refused change) nor lower min ISR.
    plan = plan_topics([DECLARED], existing(), brokers=2)
    assert plan.empty
    assert [u.topic.replication_factor for u in plan.unchanged] == [3]


def test_a_missing_topic_is_created_as_declared() -> None:
    plan = plan_topics([DECLARED], {}, brokers=3)
    assert plan.changes == (
        CreateTopic(
            TopicState(
                "blog-events",
                6,
                3,
                {
                    "min.insync.replicas": "2",
                    "cleanup.policy": "delete",
                    "retention.ms": "604800000",
                },
            )
        ),
    )
    assert not plan.refusals
    assert plan.lines() == [
        "create      blog-events: 6 partitions, replication factor 3, cleanup.policy=delete, "
        "min.insync.replicas=2, retention.ms=604800000"
    ]


def test_a_topic_as_declared_needs_nothing() -> None:
    plan = plan_topics([DECLARED], existing(), brokers=3)
    assert plan.empty
    assert plan.lines() == ["up to date  blog-events: 6 partitions, replication factor 3"]


def test_more_partitions_and_other_configs_are_planned_together() -> None:
    grown = DECLARED.model_copy(update={"partitions": 12})
    plan = plan_topics([grown], existing(retention_ms="86400000"), brokers=3)
    assert plan.changes == (
        AddPartitions("blog-events", 6, 12),
        AlterConfigs("blog-events", {"retention.ms": ("86400000", "604800000")}),
    )
    assert plan.lines()[1] == "config      blog-events: retention.ms: 86400000 -> 604800000"


def test_a_config_kafka_does_not_report_is_set() -> None:
    current = existing()
    del current["blog-events"].config["cleanup.policy"]  # type: ignore[attr-defined]
    plan = plan_topics([DECLARED], current, brokers=3)
    assert plan.changes == (AlterConfigs("blog-events", {"cleanup.policy": (None, "delete")}),)


def test_list_configs_compare_without_spaces() -> None:
    spec = DECLARED.model_copy(update={"config": {"cleanup.policy": "compact, delete"}})
    plan = plan_topics([spec], existing(cleanup_policy="compact,delete"), brokers=3)
    assert plan.empty


def test_fewer_partitions_are_refused_with_the_reason() -> None:
    plan = plan_topics([DECLARED], existing(partitions=12), brokers=3)
    assert not plan.changes
    [refusal] = plan.refusals
    assert "declares 6 partitions but has 12" in refusal.describe()
    assert "cannot remove partitions" in refusal.reason


def test_another_replication_factor_is_refused() -> None:
    spec = DECLARED.model_copy(update={"replication_factor": 2})
    plan = plan_topics([spec], existing(), brokers=3)
    [refusal] = plan.refusals
    assert "declares replication factor 2 but has 3" in refusal.reason
    assert not plan.changes


def test_auto_on_a_single_copy_topic_in_a_cluster_is_refused() -> None:
    # Created on a one-node stack, then moved to three nodes: auto now means 3 copies.
    plan = plan_topics([DECLARED], existing(replication=1, min_insync_replicas="1"), brokers=3)
    [refusal] = plan.refusals
    assert "replication factor 3 but has 1" in refusal.reason


def test_more_copies_than_live_brokers_are_refused_for_a_new_topic() -> None:
    spec = DECLARED.model_copy(update={"replication_factor": 3})
    plan = plan_topics([spec], {}, brokers=2)
    [refusal] = plan.refusals
    assert "needs 3 brokers, 2 live" in refusal.reason


def test_min_insync_above_the_copies_is_refused() -> None:
    spec = DECLARED.model_copy(
        update={"replication_factor": 2, "config": {"min.insync.replicas": "3"}}
    )
    plan = plan_topics([spec], {}, brokers=3)
    [refusal] = plan.refusals
    assert "every acks=all write would fail" in refusal.reason


def test_one_refusal_leaves_the_other_topics_planned_but_the_plan_refused() -> None:
    other = TopicSpec(name="other", partitions=1)
    plan = plan_topics([DECLARED, other], existing(partitions=12), brokers=3)
    assert [type(change) for change in plan.changes] == [CreateTopic]
    assert len(plan.refusals) == 1
    assert not plan.empty
    assert plan.lines()[0].startswith("REFUSED     blog-events:")


def test_dead_letter_topics_are_per_group() -> None:
    assert dead_letter_topic("blog-events", "counter") == "blog-events.counter.dlq"


def test_specs_for_code_use_auto_everywhere() -> None:
    [spec] = topic_specs(["t"], 4)
    assert (spec.partitions, spec.replication_factor, spec.config) == (
        4,
        "auto",
        {"min.insync.replicas": "auto"},
    )


def test_the_default_file_is_the_services_own(tmp_path: Path) -> None:
    package = tmp_path / "services" / "svc" / "src" / "svc"
    package.mkdir(parents=True)
    (tmp_path / "services" / "svc" / "topics.yaml").write_text("topics: []")
    assert default_topics_file(str(package / "__main__.py")) == (
        tmp_path / "services" / "svc" / "topics.yaml"
    )

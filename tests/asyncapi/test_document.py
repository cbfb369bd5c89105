"""docs/asyncapi.yaml agrees with what it documents, checked here independently of its generator:
each message's payload is the committed JSON Schemas (the Envelope around that one event) and
accepts the events the code produces; each topic of the teams' topics files is a channel with its
partitions and configuration; every consumer group (its `<topic>.<group>.dlq` topic) has a
receive operation and a dead-letter send; the publisher sends the three messages."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from blog_events import encode_event
from blog_testkit import BlogHistory

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = REPO / "docs" / "asyncapi.yaml"
SCHEMAS = REPO / "libs" / "events" / "schemas"
MESSAGES = ("BlogPublished", "BlogUpdated", "BlogDeleted")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    return loaded


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    return loaded


def declared_topics() -> dict[str, tuple[str, dict[str, Any]]]:
    """Topic name -> (owning team, its declaration), from every services/*/topics.yaml."""
    topics = {}
    for path in sorted(REPO.glob("services/*/topics.yaml")):
        for topic in yaml.safe_load(path.read_text(encoding="utf-8"))["topics"]:
            topics[topic["name"]] = (path.parent.name, topic)
    return topics


def resolve(document: dict[str, Any], reference: dict[str, str]) -> Any:
    """The object a local `$ref` points at, following references to references."""
    node: Any = reference
    while isinstance(node, dict) and "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def test_the_document_is_current() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/asyncapi/generate.py", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_message_payloads_are_the_committed_json_schemas(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    envelope = schema("Envelope")
    messages = document["components"]["messages"]
    for name in MESSAGES:
        payload = messages[name]["payload"]
        assert payload["properties"]["payload"] == schema(name), name
        around = {k: v for k, v in payload["properties"].items() if k != "payload"}
        assert around == {k: v for k, v in envelope["properties"].items() if k != "payload"}
        assert payload["required"] == envelope["required"]
        key = messages[name]["bindings"]["kafka"]["key"]
        assert (key["type"], key["format"]) == ("string", "uuid")


def test_each_message_accepts_the_events_the_code_produces_and_only_its_own(
    document: dict[str, Any],
) -> None:
    history = BlogHistory()
    published = history.publish(tags=("a",))
    blog_id = published.payload.blog_id
    events = {
        "BlogPublished": published,
        "BlogUpdated": history.update(blog_id),
        "BlogDeleted": history.delete(blog_id),
    }
    messages = document["components"]["messages"]
    for name, envelope in events.items():
        wire = json.loads(encode_event(envelope))
        assert wire["key"] == str(uuid.UUID(wire["payload"]["blog_id"]))  # key = blog id
        for other in MESSAGES:
            validator = jsonschema.Draft7Validator(
                messages[other]["payload"], format_checker=jsonschema.FormatChecker()
            )
            assert validator.is_valid(wire) == (other == name), (name, other)


def test_channels_are_the_topics_files(document: dict[str, Any]) -> None:
    topics = declared_topics()
    channels = {channel["address"]: channel for channel in document["channels"].values()}
    assert set(channels) == set(topics)
    for name, (_, declared) in topics.items():
        binding = channels[name]["bindings"]["kafka"]
        assert binding["partitions"] == declared["partitions"], name
        config = declared.get("config", {})
        if "cleanup.policy" in config:
            policy = [p.strip() for p in str(config["cleanup.policy"]).split(",")]
            assert binding["topicConfiguration"]["cleanup.policy"] == policy
        if "retention.ms" in config:
            assert binding["topicConfiguration"]["retention.ms"] == int(config["retention.ms"])


def test_every_group_receives_and_dead_letters_and_the_publisher_sends(
    document: dict[str, Any],
) -> None:
    topics = declared_topics()
    sources = {name for name in topics if not name.endswith((".dlq", ".retry"))}
    groups = {
        name.split(".")[-2]: (source, name)
        for name in topics
        for source in sources
        if name.startswith(f"{source}.") and name.endswith(".dlq")
    }
    assert {"counter", "indexer"} <= set(groups)
    operations = document["operations"]
    for group, (source, dlq) in groups.items():
        receive = operations[f"{group}.receive"]
        assert receive["action"] == "receive"
        assert resolve(document, receive["channel"])["address"] == source
        assert receive["bindings"]["kafka"]["groupId"]["enum"] == [group]
        names = {resolve(document, m)["name"] for m in receive["messages"]}
        assert names == set(MESSAGES)
        dead = operations[f"{group}.deadLetter"]
        assert dead["action"] == "send"
        assert resolve(document, dead["channel"])["address"] == dlq
    sends = [op for op in operations.values() if op["action"] == "send"]
    to_source = [op for op in sends if resolve(document, op["channel"])["address"] in sources]
    assert len(to_source) == 1
    assert {resolve(document, m)["name"] for m in to_source[0]["messages"]} == set(MESSAGES)
    # Each group also reads its own retry topic (its redrive's destination), no other group does.
    for group, (source, _) in groups.items():
        redriven = operations[f"{group}.receiveRedriven"]
        assert resolve(document, redriven["channel"])["address"] == f"{source}.{group}.retry"
        assert redriven["bindings"]["kafka"]["groupId"]["enum"] == [group]
    receivers = {k for k, op in operations.items() if op["action"] == "receive"}
    assert receivers == {
        f"{group}.{kind}" for group in groups for kind in ("receive", "receiveRedriven")
    }


def test_errors_and_warnings_fail_infos_do_not() -> None:
    spec = importlib.util.spec_from_file_location(
        "asyncapi_generate", REPO / "scripts" / "asyncapi" / "generate.py"
    )
    assert spec is not None
    assert spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    diagnostic = {"code": "some-rule", "message": "m", "path": ["channels", "x"]}
    assert generator.judge([{**diagnostic, "severity": 0}]) == ["error some-rule: m at channels.x"]
    assert len(generator.judge([{**diagnostic, "severity": 1}])) == 1
    assert generator.judge([{**diagnostic, "severity": 2}, {**diagnostic, "severity": 3}]) == []

"""Poison messages: records written by a foreign client straight into the topic (not through the
publisher nor `encode_event`) go to the dead-letter topic with the reason in headers, once per
consumer group; the consumers keep going and the good events around them are counted and indexed."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from blog_events import BlogPublished, encode_event, new_envelope
from blog_testkit import Stack, read_topic, wait_until
from service_kit.topics import dead_letter_topic
from tests.pipeline import Pipeline

from .support import dlq_header, metric, post_accepted

pytestmark = pytest.mark.e2e

DEAD_LETTERED = "blog_consumer_events_dead_lettered_total"
HUGE_BODY_CHARS = 700_000  # far beyond the contract's BODY_MAX, still under Kafka's 1 MB


@dataclass(frozen=True)
class Poison:
    name: str
    key: bytes | None
    value: bytes | None
    reason_contains: str


def valid_event_json(author_id: str) -> dict[str, Any]:
    payload = BlogPublished(
        blog_id=uuid.uuid4(),
        author_id=uuid.UUID(author_id),
        version=1,
        title="Would count if it parsed",
        body="body",
        published_at=datetime.now(UTC),
    )
    decoded: dict[str, Any] = json.loads(encode_event(new_envelope(payload)))
    return decoded


def poison_records(author_id: str, shared_key: bytes) -> list[Poison]:
    """Every kind of bad record, each for the author under test: one that slipped through would
    show up in the author's count."""
    wrong_version = valid_event_json(author_id)
    wrong_version["schema_version"] = 2
    missing_field = valid_event_json(author_id)
    del missing_field["payload"]["author_id"]
    null_field = valid_event_json(author_id)
    null_field["payload"]["title"] = None
    huge = valid_event_json(author_id)
    huge["payload"]["body"] = "x" * HUGE_BODY_CHARS
    return [
        Poison("arbitrary bytes", shared_key, b"\x00\x9f\xff\xfe\x01binary", "Invalid JSON"),
        Poison("truncated JSON", b"k-truncated", b'{"event_id": "', "Invalid JSON"),
        Poison("not an object", None, b"[1, 2, 3]", "<root>"),
        Poison("wrong schema version", shared_key, _json(wrong_version), "schema_version"),
        Poison("missing field", b"k-missing", _json(missing_field), "author_id"),
        Poison("null value", b"k-null", None, "empty message value"),
        Poison("null field", shared_key, _json(null_field), "title"),
        Poison("huge value", b"k-huge", _json(huge), "body"),
    ]


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


async def test_poison_goes_to_the_dlq_and_the_good_events_around_it_are_processed(
    pipeline: Pipeline, stack: Stack, topic: str
) -> None:
    counter_group = pipeline.counter.env["COUNTER_GROUP_ID"]
    indexer_group = pipeline.indexer.env["INDEXER_GROUP_ID"]
    author = await pipeline.create_author("poisoned")
    expected: dict[str, int] = {}
    for n in range(3):
        expected[await post_accepted(pipeline, author, f"before poison {n}")] = 1
    # Some poison shares the partition of a good blog whose update comes after it.
    first_blog = next(iter(expected))
    poisons = poison_records(author.author_id, first_blog.encode())

    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        positions = {}
        for poison in poisons:
            sent = await producer.send_and_wait(topic, key=poison.key, value=poison.value)
            positions[(sent.partition, sent.offset)] = poison
    finally:
        await producer.stop()

    for n in range(3):
        expected[await post_accepted(pipeline, author, f"after poison {n}")] = 1
    response = await pipeline.http.put(
        f"{pipeline.publisher.url}/blogs/{first_blog}",
        json={"title": "Updated after the poison", "body": "Edited.", "tags": []},
        headers=author.headers,
    )
    assert response.status_code == 202, response.text
    expected[first_blog] = 2

    async def good_events_processed() -> bool:
        return await pipeline.total_blogs(author) == len(expected) and (
            await pipeline.indexed(author) == expected
        )

    await wait_until(good_events_processed, timeout=60, what="the good events counted, indexed")

    async def all_dead_lettered() -> bool:
        counted = await metric(pipeline.http, pipeline.counter.url, DEAD_LETTERED,
                               group=counter_group)  # fmt: skip
        indexed = await metric(pipeline.http, pipeline.indexer.url, DEAD_LETTERED,
                               group=indexer_group)  # fmt: skip
        return counted == indexed == len(poisons)

    await wait_until(all_dead_lettered, timeout=60, what="every poison record dead-lettered")

    # Each group dead-letters each poison record once, to its own dead-letter topic.
    dead = []
    for group in (counter_group, indexer_group):
        own = await read_topic(stack.kafka_bootstrap, dead_letter_topic(topic, group))
        assert len(own) == len(poisons), group
        assert {dlq_header(record, "dlq-group") for record in own} == {group}
        dead += own
    seen: dict[tuple[int, int], set[str]] = {}
    for record in dead:
        source = (int(dlq_header(record, "dlq-source-partition")),
                  int(dlq_header(record, "dlq-source-offset")))  # fmt: skip
        poison = positions[source]
        assert dlq_header(record, "dlq-source-topic") == topic
        assert record.key == poison.key, poison.name
        assert record.value == poison.value, poison.name
        reason = dlq_header(record, "dlq-reason")
        assert poison.reason_contains in reason, (poison.name, reason)
        assert len(reason.encode()) <= 1000, "the reason is short even for a huge record"
        assert dlq_header(record, "dlq-failed-at").startswith(str(datetime.now(UTC).year))
        seen.setdefault(source, set()).add(dlq_header(record, "dlq-group"))
    assert seen == {source: {counter_group, indexer_group} for source in positions}

    # Both consumers are alive and ready: the poison did not stop or crash them.
    for service in (pipeline.counter, pipeline.indexer):
        assert service.running, service.log_tail()
        ready = await pipeline.http.get(f"{service.url}/readyz")
        assert ready.status_code == 200, ready.text
    assert "Traceback" not in pipeline.counter.log_text()
    assert "Traceback" not in pipeline.indexer.log_text()

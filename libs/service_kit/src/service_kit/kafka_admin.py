"""Topic creation (broker-side auto creation is off): idempotent, safe to run from every
service instance at startup."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

log = logging.getLogger(__name__)

NO_ERROR = 0


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    replication_factor: int = 1,
    *,
    ready_timeout_s: float = 30.0,
) -> None:
    """Create each `topic -> partitions` that does not exist yet (an existing topic is fine),
    then wait until every partition has a leader so producers and consumers can use them."""
    if not topics:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [
                NewTopic(name=name, num_partitions=count, replication_factor=replication_factor)
                for name, count in topics.items()
            ]
        )
        for topic_error in response.topic_errors:
            name, code = topic_error[0], topic_error[1]
            if code == NO_ERROR:
                log.info("created topic %s (%d partitions)", name, topics[name])
            elif code == TopicAlreadyExistsError.errno:
                log.debug("topic %s already exists", name)
            else:
                message = topic_error[2] if len(topic_error) > 2 else ""
                raise for_code(code)(f"cannot create topic {name}: {message}")
        await _wait_until_ready(admin, topics, ready_timeout_s)
    finally:
        await admin.close()


async def _wait_until_ready(
    admin: AIOKafkaAdminClient, topics: Mapping[str, int], timeout_s: float
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        described = await admin.describe_topics(list(topics))
        pending = [name for name in topics if not _has_leaders(described, name)]
        if not pending:
            for entry in described:
                expected = topics.get(entry["topic"], 0)
                if len(entry["partitions"]) < expected:
                    # Never shrink or silently grow a live topic: say so and carry on.
                    log.warning(
                        "topic %s has %d partitions, %d wanted",
                        entry["topic"],
                        len(entry["partitions"]),
                        expected,
                    )
            return
        if loop.time() >= deadline:
            raise TimeoutError(f"topics without partition leaders after {timeout_s:g}s: {pending}")
        await asyncio.sleep(0.2)


def _has_leaders(described: list[dict[str, object]], name: str) -> bool:
    for entry in described:
        if entry["topic"] == name and entry["error_code"] == NO_ERROR:
            partitions = entry["partitions"]
            assert isinstance(partitions, list)
            return bool(partitions) and all(
                p["error_code"] == NO_ERROR and p["leader"] >= 0 for p in partitions
            )
    return False

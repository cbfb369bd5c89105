"""A consumer group run from a service's lifespan never creates topics: it waits for its source
topic and its dead-letter topic, says which one is missing (once in the log, always in
`problem`), and consumes as soon as both exist."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from blog_events import Envelope
from blog_testkit import BLOG_DECODER, BlogHistory, Stack, produce, wait_until
from blog_testkit.plugin import create_dead_letter_topics, create_topic
from service_kit.background import consuming
from service_kit.consumer import ConsumedEvent, ConsumerConfig, ConsumerMetrics
from service_kit.kafka_admin import admin_client
from service_kit.topics import dead_letter_topic

pytestmark = pytest.mark.integration


async def test_the_consumer_waits_for_its_topics_and_says_which_is_missing(
    stack: Stack, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = f"{topic}.later"  # created during the test; deleted with the fixture's topic
    group = f"{topic}-group"
    config = ConsumerConfig(
        bootstrap_servers=stack.kafka_bootstrap,
        topic=source,
        group_id=group,
        dlq_topic=dead_letter_topic(source, group),
    )
    handled: list[ConsumedEvent[Envelope]] = []

    async def handler(events: Sequence[ConsumedEvent[Envelope]]) -> None:
        handled.extend(events)

    caplog.set_level(logging.INFO, logger="service_kit.background")
    metrics = ConsumerMetrics(CollectorRegistry())
    async with consuming(
        config, handler, metrics, decoder=BLOG_DECODER, topic_wait_interval_s=0.2
    ) as background:

        async def waiting_for(*names: str) -> bool:
            """The problem names exactly these topics as missing."""
            problem = background.problem or ""
            missing = {
                name for name in (source, config.dlq_topic) if f"topic {name} does not" in problem
            }
            return missing == set(names)

        await wait_until(
            lambda: waiting_for(source, config.dlq_topic), timeout=30, what="both missing"
        )
        assert not background.healthy

        await create_topic(stack.kafka_bootstrap, source)
        await wait_until(lambda: waiting_for(config.dlq_topic), timeout=30, what="DLQ missing")
        # Many polls later (every 0.2 s), the log has one line per reason, not one per poll
        # (a third one if the new topic was briefly seen without leaders).
        async with admin_client(stack.kafka_bootstrap) as admin:
            for _ in range(10):
                await admin.describe_topics([source])
        waits = [r.getMessage() for r in caplog.records if "waits before consuming" in r.message]
        assert 2 <= len(waits) <= 3, waits
        assert config.dlq_topic in waits[-1]

        await create_dead_letter_topics(stack.kafka_bootstrap, source, [group])

        async def consuming_now() -> bool:
            return background.healthy

        await wait_until(consuming_now, timeout=60, what="consumer started")
        assert background.problem is None
        event = BlogHistory().publish()
        await produce(stack.kafka_bootstrap, source, [event])

        async def got_it() -> bool:
            return [e.envelope.event_id for e in handled] == [event.event_id]

        await wait_until(got_it, timeout=60, what="the event handled")


async def test_stopping_while_waiting_for_topics_is_immediate(stack: Stack, topic: str) -> None:
    config = ConsumerConfig(
        bootstrap_servers=stack.kafka_bootstrap,
        topic=f"{topic}.never",
        group_id=f"{topic}-group",
        dlq_topic=f"{topic}.never.g.dlq",
    )

    async def handler(events: Sequence[ConsumedEvent[Envelope]]) -> None:
        raise AssertionError("nothing to consume")

    async with consuming(
        config,
        handler,
        ConsumerMetrics(CollectorRegistry()),
        decoder=BLOG_DECODER,
        stop_timeout_s=5,
    ) as background:
        await wait_until(
            lambda: _has_problem(background.problem), timeout=30, what="waiting for topics"
        )
    assert background.task.done()


async def _has_problem(problem: str | None) -> bool:
    return problem is not None and "does not exist" in problem

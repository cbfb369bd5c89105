"""The admin questions services ask Kafka, against the real stack."""

from __future__ import annotations

import pytest

from blog_testkit import Stack
from service_kit.kafka_admin import admin_client, produce_blockers, unusable_topics

pytestmark = pytest.mark.integration


async def test_a_writable_topic_has_no_blockers_and_a_missing_one_says_so(
    stack: Stack, topic: str
) -> None:
    assert await produce_blockers(stack.kafka_bootstrap, topic) == ""
    missing = f"{topic}.missing"
    assert await produce_blockers(stack.kafka_bootstrap, missing) == (
        f"topic {missing} does not exist"
    )
    async with admin_client(stack.kafka_bootstrap) as admin:
        assert await unusable_topics(admin, [topic, missing]) == {missing: "does not exist"}

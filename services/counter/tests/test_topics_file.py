"""The counter team's topics file: valid, and it declares the group's dead-letter and retry
topics."""

from __future__ import annotations

import counter.__main__ as entry_point
from counter.settings import Settings
from service_kit.topics import default_topics_file, load_topics_file


def test_the_topics_file_declares_the_groups_dead_letter_and_retry_topics() -> None:
    declared = load_topics_file(default_topics_file(entry_point.__file__))
    settings = Settings(database_url="postgresql://x/y")
    assert [topic.name for topic in declared.topics] == [settings.dlq_topic, settings.retry_topic]
    assert settings.dlq_topic == "blog-events.counter.dlq"
    assert settings.retry_topic == "blog-events.counter.retry"

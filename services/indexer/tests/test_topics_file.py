"""The indexer team's topics file: valid, and it declares the group's dead-letter and retry
topics."""

from __future__ import annotations

import indexer.__main__ as entry_point
from indexer.settings import IndexerSettings
from service_kit.topics import default_topics_file, load_topics_file


def test_the_topics_file_declares_the_groups_dead_letter_and_retry_topics() -> None:
    declared = load_topics_file(default_topics_file(entry_point.__file__))
    settings = IndexerSettings(es_url="http://es:9200")
    assert [topic.name for topic in declared.topics] == [settings.dlq_topic, settings.retry_topic]
    assert settings.dlq_topic == "blog-events.indexer.dlq"
    assert settings.retry_topic == "blog-events.indexer.retry"

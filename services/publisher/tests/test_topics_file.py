"""The publisher team's topics file: valid, and it declares the topic the relay writes."""

from __future__ import annotations

import publisher.__main__ as entry_point
from publisher.settings import PublisherSettings
from service_kit.topics import default_topics_file, load_topics_file


def test_the_topics_file_declares_the_topic_the_relay_writes() -> None:
    declared = load_topics_file(default_topics_file(entry_point.__file__))
    settings = PublisherSettings(database_url="postgresql://x/y")
    [blog_events] = [topic for topic in declared.topics if topic.name == settings.topic]
    assert blog_events.replication_factor == "auto"
    assert blog_events.config["min.insync.replicas"] == "auto"

"""Pure parts of the batch consumer: backoff, DLQ headers, commit offsets, metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from prometheus_client import CollectorRegistry, generate_latest

from service_kit.backoff import Backoff, backoff_delay
from service_kit.consumer import (
    DLQ_REASON_MAX_BYTES,
    ConsumerMetrics,
    commit_offsets,
    dlq_headers,
    truncate_utf8,
)


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    ceilings = [backoff_delay(n, 0.2, 10.0, rand=lambda: 1.0) for n in range(1, 10)]
    assert ceilings == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0])


def test_backoff_full_jitter_spans_zero_to_ceiling() -> None:
    assert backoff_delay(3, 0.2, 10.0, rand=lambda: 0.0) == 0.0
    assert backoff_delay(3, 0.2, 10.0, rand=lambda: 0.5) == pytest.approx(0.4)
    for attempt in range(1, 50):
        assert 0.0 <= backoff_delay(attempt, 0.2, 10.0) <= 10.0


def test_backoff_survives_a_very_long_outage() -> None:
    assert backoff_delay(10_000, 0.2, 10.0, rand=lambda: 1.0) == 10.0


def test_backoff_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(0, 0.2, 10.0)


def test_truncate_utf8_never_splits_a_character() -> None:
    assert truncate_utf8("abc", 10) == b"abc"
    text = "é" * 10  # 2 bytes each
    cut = truncate_utf8(text, 5)
    assert cut == "éé".encode()
    assert cut.decode("utf-8") == "éé"


def test_dlq_headers_say_why_and_where_from() -> None:
    failed_at = datetime(2025, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    headers = dlq_headers(
        reason="payload.title: String should have at most 300 characters",
        group="counter",
        topic="blog-events",
        partition=4,
        offset=1234,
        failed_at=failed_at,
        original=[("trace-id", b"abc"), ("dlq-reason", b"from an earlier hop")],
    )
    assert headers == [
        ("trace-id", b"abc"),
        ("dlq-reason", b"payload.title: String should have at most 300 characters"),
        ("dlq-group", b"counter"),
        ("dlq-source-topic", b"blog-events"),
        ("dlq-source-partition", b"4"),
        ("dlq-source-offset", b"1234"),
        ("dlq-failed-at", failed_at.astimezone(UTC).isoformat().encode()),
    ]
    assert dict(headers)["dlq-failed-at"] == b"2025-05-06T05:08:09+00:00"


def test_dlq_reason_is_truncated_and_never_empty() -> None:
    now = datetime.now(UTC)
    long_reason = dict(
        dlq_headers(reason="x" * 10_000, group="g", topic="t", partition=0, offset=0, failed_at=now)
    )["dlq-reason"]
    assert len(long_reason) == DLQ_REASON_MAX_BYTES
    empty_reason = dict(
        dlq_headers(reason="", group="g", topic="t", partition=0, offset=0, failed_at=now)
    )["dlq-reason"]
    assert empty_reason == b"unknown"


def _record(partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t",
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=b"",
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=(),
    )


def test_commit_offsets_are_last_plus_one_per_partition() -> None:
    records = [_record(0, 5), _record(1, 9), _record(0, 7), _record(0, 6), _record(2, 0)]
    assert commit_offsets(records) == {
        TopicPartition("t", 0): OffsetAndMetadata(8, ""),
        TopicPartition("t", 1): OffsetAndMetadata(10, ""),
        TopicPartition("t", 2): OffsetAndMetadata(1, ""),
    }
    assert commit_offsets([]) == {}


def test_metrics_are_registered_once_per_registry_with_the_documented_names() -> None:
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    assert ConsumerMetrics(registry) is metrics
    assert ConsumerMetrics(CollectorRegistry()) is not metrics

    metrics.events_processed.labels(group="counter").inc(3)
    metrics.events_failed.labels(group="counter").inc()
    metrics.events_dead_lettered.labels(group="indexer").inc(2)
    metrics.batch_size.labels(group="counter").observe(3)
    metrics.batch_duration_seconds.labels(group="counter").observe(0.05)
    text = generate_latest(registry).decode()
    assert 'blog_consumer_events_processed_total{group="counter"} 3.0' in text
    assert 'blog_consumer_events_failed_total{group="counter"} 1.0' in text
    assert 'blog_consumer_events_dead_lettered_total{group="indexer"} 2.0' in text
    assert 'blog_consumer_batch_size_count{group="counter"} 1.0' in text
    assert 'blog_consumer_batch_duration_seconds_count{group="counter"} 1.0' in text


def test_backoff_counts_consecutive_failures_and_resets() -> None:
    backoff = Backoff(initial_s=0.1, max_s=2.0)
    delays = [backoff.next_delay() for _ in range(12)]
    assert backoff.failures == 12
    assert all(0.0 <= d <= 2.0 for d in delays)
    assert delays[0] <= 0.1
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() <= 0.1

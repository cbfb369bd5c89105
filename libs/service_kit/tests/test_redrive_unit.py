"""The redrive's decisions, without Kafka: what is re-published, skipped, and with which headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service_kit.consumer import dlq_headers
from service_kit.redrive import (
    DEFAULT_GROUP,
    REDRIVEN_FROM_HEADER,
    DeadLetter,
    RedriveReport,
    SourceId,
    Verdict,
    describe,
    judge,
    parse_args,
    redrive_headers,
)


def dead_letter(
    *,
    offset: int = 7,
    source_topic: str = "blog-events",
    source_partition: int = 3,
    source_offset: int = 42,
    group: str = "counter",
    original: tuple[tuple[str, bytes], ...] = (("trace-id", b"abc"),),
) -> DeadLetter:
    headers = dlq_headers(
        reason="payload: field required",
        group=group,
        topic=source_topic,
        partition=source_partition,
        offset=source_offset,
        failed_at=datetime(2025, 1, 1, tzinfo=UTC),
        original=original,
    )
    return DeadLetter(
        topic="blog-events.dlq",
        partition=1,
        offset=offset,
        key=b"blog-1",
        value=b"{not json",
        headers=tuple(headers),
    )


def test_the_source_is_read_from_the_dlq_headers() -> None:
    letter = dead_letter()
    assert letter.source_topic == "blog-events"
    assert letter.source_partition == 3
    assert letter.source_offset == 42
    assert letter.position == "blog-events.dlq[1]@7"


def test_a_dead_letter_with_a_source_is_redriven() -> None:
    assert judge(dead_letter(), set()) is Verdict.REDRIVE


def test_the_copy_dead_lettered_by_another_group_is_a_duplicate() -> None:
    # counter and indexer both dead-letter the same poison record: re-publish it once.
    already: set[SourceId] = {("blog-events", 3, 42)}
    assert judge(dead_letter(group="indexer", offset=8), already) is Verdict.DUPLICATE
    assert judge(dead_letter(source_offset=43), already) is Verdict.REDRIVE


def test_without_a_source_topic_there_is_nowhere_to_send_it() -> None:
    bare = DeadLetter("blog-events.dlq", 0, 0, None, b"x", ())
    assert judge(bare, set()) is Verdict.NO_SOURCE
    # Never feed the dead-letter topic into itself.
    looping = dead_letter(source_topic="blog-events.dlq")
    assert judge(looping, set()) is Verdict.NO_SOURCE


def test_without_a_source_position_copies_cannot_be_told_apart_so_none_is_skipped() -> None:
    letter = DeadLetter(
        "blog-events.dlq", 0, 5, b"k", b"v", (("dlq-source-topic", b"blog-events"),)
    )
    assert letter.source_partition is None
    assert judge(letter, {("blog-events", None, None)}) is Verdict.REDRIVE


def test_redriven_headers_keep_the_records_own_and_drop_the_dead_lettering_ones() -> None:
    headers = redrive_headers(dead_letter())
    assert headers == [("trace-id", b"abc"), (REDRIVEN_FROM_HEADER, b"blog-events.dlq[1]@7")]


def test_redriving_a_redriven_record_again_names_only_the_latest_dead_letter() -> None:
    earlier = ((REDRIVEN_FROM_HEADER, b"blog-events.dlq[1]@2"),)
    headers = redrive_headers(dead_letter(original=earlier, offset=9))
    assert headers == [(REDRIVEN_FROM_HEADER, b"blog-events.dlq[1]@9")]


def test_description_names_source_key_group_and_reason() -> None:
    text = describe(dead_letter())
    assert "source=blog-events[3]@42" in text
    assert "key=blog-1" in text
    assert "group=counter" in text
    assert "reason=payload: field required" in text


def test_summary_says_what_was_done_or_would_be() -> None:
    report = RedriveReport("blog-events.dlq", "g", dry_run=False, redriven=2, duplicates=1)
    assert report.summary() == (
        "blog-events.dlq (group g): redriven 2, skipped 1 duplicate(s) and 0 without a source"
    )
    dry = RedriveReport("blog-events.dlq", "g", dry_run=True, redriven=2)
    assert "would redrive 2" in dry.summary()


def test_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOG_KAFKA_BOOTSTRAP", raising=False)
    args = parse_args(["--bootstrap", "k:9092", "--dlq-topic", "blog-events.dlq"])
    assert (args.bootstrap, args.dlq_topic, args.group, args.dry_run) == (
        "k:9092",
        "blog-events.dlq",
        DEFAULT_GROUP,
        False,
    )
    args = parse_args(["--bootstrap", "k:9092", "--dlq-topic", "d", "--group", "g", "--dry-run"])
    assert (args.group, args.dry_run) == ("g", True)
    with pytest.raises(SystemExit):
        parse_args(["--dlq-topic", "d"])  # no bootstrap, and none in the environment


def test_bootstrap_defaults_to_the_stack_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOG_KAFKA_BOOTSTRAP", "env:9092")
    assert parse_args(["--dlq-topic", "d"]).bootstrap == "env:9092"

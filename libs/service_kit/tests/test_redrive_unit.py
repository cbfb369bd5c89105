"""The redrive's decisions, without Kafka: what is re-published, skipped, and with which headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service_kit.consumer import dlq_headers
from service_kit.redrive import (
    REDRIVE_ATTEMPTS_HEADER,
    REDRIVEN_FROM_HEADER,
    DeadLetter,
    RedriveReport,
    SourceId,
    Verdict,
    default_group,
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


def test_a_second_copy_of_one_source_record_is_a_duplicate() -> None:
    # A consumer that crashed after dead-lettering, before committing, dead-letters it twice.
    already: set[SourceId] = {("blog-events", 3, 42)}
    assert judge(dead_letter(offset=8), already) is Verdict.DUPLICATE
    assert judge(dead_letter(source_offset=43), already) is Verdict.REDRIVE


def test_a_record_redriven_max_attempts_times_is_kept() -> None:
    twice = dead_letter(original=((REDRIVE_ATTEMPTS_HEADER, b"2"),))
    assert twice.attempts == 2
    assert dead_letter().attempts == 0
    assert judge(twice, set(), max_attempts=3) is Verdict.REDRIVE
    assert judge(twice, set(), max_attempts=2) is Verdict.EXHAUSTED
    assert judge(dead_letter(), set(), max_attempts=1) is Verdict.REDRIVE


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
    assert headers == [
        ("trace-id", b"abc"),
        (REDRIVEN_FROM_HEADER, b"blog-events.dlq[1]@7"),
        (REDRIVE_ATTEMPTS_HEADER, b"1"),
    ]


def test_redriving_a_redriven_record_again_names_the_latest_dead_letter_and_counts_up() -> None:
    earlier = ((REDRIVEN_FROM_HEADER, b"blog-events.dlq[1]@2"), (REDRIVE_ATTEMPTS_HEADER, b"1"))
    headers = redrive_headers(dead_letter(original=earlier, offset=9))
    assert headers == [
        (REDRIVEN_FROM_HEADER, b"blog-events.dlq[1]@9"),
        (REDRIVE_ATTEMPTS_HEADER, b"2"),
    ]


def test_description_names_source_key_group_and_reason() -> None:
    text = describe(dead_letter())
    assert "source=blog-events[3]@42" in text
    assert "key=blog-1" in text
    assert "group=counter" in text
    assert "reason=payload: field required" in text
    assert "attempts=0" in text


def test_summary_says_what_was_done_or_would_be() -> None:
    report = RedriveReport(
        "t.g.dlq", "t.g.retry", "g-redrive", dry_run=False, redriven=2, duplicates=1
    )
    report.exhausted.append("t.g.dlq[0]@3")
    assert report.summary() == (
        "t.g.dlq -> t.g.retry (group g-redrive): redriven 2, kept 1 at the limit of 3 "
        "attempt(s), skipped 1 duplicate(s) and 0 without a source"
    )
    dry = RedriveReport("t.g.dlq", "t.g.retry", "g-redrive", dry_run=True, redriven=2)
    assert "would redrive 2" in dry.summary()


def test_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLOG_KAFKA_BOOTSTRAP", raising=False)
    args = parse_args(["--bootstrap", "k:9092", "--topic", "t", "--consumer-group", "counter"])
    assert (args.bootstrap, args.topic, args.consumer_group, args.group, args.dry_run) == (
        "k:9092",
        "t",
        "counter",
        None,
        False,
    )
    assert args.max_attempts == 3
    assert default_group("counter") == "counter-redrive"
    args = parse_args(
        [
            "--bootstrap",
            "k",
            "--topic",
            "t",
            "--consumer-group",
            "c",
            "--group",
            "g",
            "--dry-run",
            "--max-attempts",
            "5",
        ]
    )
    assert (args.group, args.dry_run, args.max_attempts) == ("g", True, 5)
    with pytest.raises(SystemExit):
        parse_args(["--topic", "t", "--consumer-group", "c"])  # no bootstrap anywhere


def test_bootstrap_defaults_to_the_stack_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOG_KAFKA_BOOTSTRAP", "env:9092")
    assert parse_args(["--topic", "t", "--consumer-group", "c"]).bootstrap == "env:9092"

"""BlogHistory makes the events the publisher would: consecutive versions, a moving clock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from blog_events import BlogDeleted, BlogPublished, BlogUpdated, decode_event
from blog_testkit import BlogHistory, as_record


def test_publish_update_delete_have_consecutive_versions_and_keep_the_author() -> None:
    history = BlogHistory()
    author = uuid.uuid4()
    published = history.publish(author, title="First", tags=("kafka",))
    blog_id = published.payload.blog_id
    updated = history.update(blog_id)
    renamed = history.update(blog_id, title="Renamed", body="new body")
    deleted = history.delete(blog_id)

    assert isinstance(published.payload, BlogPublished)
    assert isinstance(updated.payload, BlogUpdated)
    assert isinstance(renamed.payload, BlogUpdated)
    assert isinstance(deleted.payload, BlogDeleted)
    payloads = [e.payload for e in (published, updated, renamed, deleted)]
    assert [p.version for p in payloads] == [1, 2, 3, 4]
    assert {p.blog_id for p in payloads} == {blog_id}
    assert {p.author_id for p in payloads} == {author}
    assert updated.payload.title == "First (v2)"
    assert (renamed.payload.title, renamed.payload.body) == ("Renamed", "new body")
    # An update keeps what the publisher keeps: tags and the first publication time.
    assert renamed.payload.tags == ("kafka",)
    assert renamed.payload.published_at == published.payload.published_at
    assert history.last == {blog_id: deleted.payload}
    assert len({e.event_id for e in (published, updated, renamed, deleted)}) == 4


def test_the_clock_moves_forward_one_second_per_event() -> None:
    start = datetime(2024, 6, 1, tzinfo=UTC)
    history = BlogHistory(start)
    first = history.publish()
    second = history.publish()
    update = history.update(first.payload.blog_id)
    delete = history.delete(second.payload.blog_id)
    assert isinstance(first.payload, BlogPublished)
    assert isinstance(second.payload, BlogPublished)
    assert isinstance(update.payload, BlogUpdated)
    assert isinstance(delete.payload, BlogDeleted)
    times = [
        first.payload.published_at,
        second.payload.published_at,
        update.payload.updated_at,
        delete.payload.deleted_at,
    ]
    assert [(t - start).total_seconds() for t in times] == [1, 2, 3, 4]


def test_publish_without_ids_makes_fresh_ones_and_honours_given_ones() -> None:
    history = BlogHistory()
    a, b = history.publish(), history.publish()
    assert a.payload.blog_id != b.payload.blog_id
    assert a.payload.author_id != b.payload.author_id
    blog_id, author = uuid.uuid4(), uuid.uuid4()
    given = history.publish(author, blog_id=blog_id)
    assert (given.payload.blog_id, given.payload.author_id) == (blog_id, author)


def test_live_blogs_leave_out_deleted_ones_and_filter_by_author() -> None:
    history = BlogHistory()
    alice, bob = uuid.uuid4(), uuid.uuid4()
    kept = history.publish(alice).payload.blog_id
    gone = history.publish(alice).payload.blog_id
    bobs = history.publish(bob).payload.blog_id
    history.update(kept)
    history.delete(gone)
    assert history.live_blogs() == {kept, bobs}
    assert history.live_blogs(alice) == {kept}
    assert history.live_blogs(uuid.uuid4()) == set()


def test_a_deleted_blog_can_be_neither_updated_nor_deleted_again() -> None:
    history = BlogHistory()
    blog_id = history.publish().payload.blog_id
    history.delete(blog_id)
    with pytest.raises(ValueError, match="deleted"):
        history.update(blog_id)
    with pytest.raises(ValueError, match="deleted"):
        history.delete(blog_id)
    with pytest.raises(KeyError):
        history.update(uuid.uuid4())


def test_as_record_is_the_relay_message_keyed_by_blog_id() -> None:
    envelope = BlogHistory().publish(title="On the wire")
    key, value = as_record(envelope)
    assert key == str(envelope.payload.blog_id).encode()
    assert decode_event(value) == envelope

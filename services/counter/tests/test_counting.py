"""The counting rules without I/O: folding a batch per blog, the version guard, author deltas."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from blog_events import BlogDeleted, BlogPublished, BlogUpdated, Envelope, new_envelope
from counter.counting import (
    BlogChange,
    StoredBlog,
    by_uuid,
    fold_newest_per_blog,
    plan_batch,
)

NOW = datetime(2025, 1, 1, tzinfo=UTC)
AUTHOR_A = uuid.UUID(int=0xA)
AUTHOR_B = uuid.UUID(int=0xB)


def published(blog_id: uuid.UUID, author_id: uuid.UUID = AUTHOR_A) -> Envelope:
    return new_envelope(
        BlogPublished(
            blog_id=blog_id, author_id=author_id, version=1, title="t", body="b", published_at=NOW
        )
    )


def updated(blog_id: uuid.UUID, version: int, author_id: uuid.UUID = AUTHOR_A) -> Envelope:
    return new_envelope(
        BlogUpdated(
            blog_id=blog_id,
            author_id=author_id,
            version=version,
            title="t2",
            body="b2",
            published_at=NOW,
            updated_at=NOW,
        )
    )


def deleted(blog_id: uuid.UUID, version: int, author_id: uuid.UUID = AUTHOR_A) -> Envelope:
    return new_envelope(
        BlogDeleted(blog_id=blog_id, author_id=author_id, version=version, deleted_at=NOW)
    )


def stored_from(change: BlogChange) -> StoredBlog:
    return StoredBlog(change.author_id, change.version, change.live)


def run_batches(
    *batches: list[Envelope],
) -> tuple[dict[uuid.UUID, StoredBlog], dict[uuid.UUID, int]]:
    """Apply batches one after the other the way the repository does; return state and totals."""
    state: dict[uuid.UUID, StoredBlog] = {}
    totals: dict[uuid.UUID, int] = {}
    for batch in batches:
        plan = plan_batch(fold_newest_per_blog(batch), state)
        for change in plan.changes:
            state[change.blog_id] = stored_from(change)
        for author, delta in plan.author_deltas.items():
            totals[author] = totals.get(author, 0) + delta
    return state, totals


def test_publish_counts_one_for_its_author() -> None:
    blog = uuid.uuid4()
    state, totals = run_batches([published(blog)])
    assert totals == {AUTHOR_A: 1}
    assert state[blog] == StoredBlog(AUTHOR_A, 1, True)


def test_update_changes_version_but_not_the_count() -> None:
    blog = uuid.uuid4()
    state, totals = run_batches([published(blog)], [updated(blog, 2)])
    assert totals == {AUTHOR_A: 1}
    assert state[blog] == StoredBlog(AUTHOR_A, 2, True)


def test_update_alone_delta_is_zero_so_no_author_write() -> None:
    blog = uuid.uuid4()
    plan = plan_batch(
        fold_newest_per_blog([updated(blog, 2)]), {blog: StoredBlog(AUTHOR_A, 1, True)}
    )
    assert [c.version for c in plan.changes] == [2]
    assert plan.author_deltas == {}


def test_delete_takes_the_blog_off_its_authors_count() -> None:
    blog, other = uuid.uuid4(), uuid.uuid4()
    state, totals = run_batches([published(blog), published(other)], [deleted(blog, 2)])
    assert totals == {AUTHOR_A: 1}
    assert state[blog].live is False


def test_two_authors_are_counted_apart() -> None:
    blogs_a = [uuid.uuid4() for _ in range(3)]
    blog_b = uuid.uuid4()
    _, totals = run_batches(
        [published(b) for b in blogs_a] + [published(blog_b, AUTHOR_B)],
        [deleted(blogs_a[0], 2), updated(blog_b, 2, AUTHOR_B)],
    )
    assert totals == {AUTHOR_A: 2, AUTHOR_B: 1}


def test_replay_of_an_older_version_is_a_no_op() -> None:
    blog = uuid.uuid4()
    first = published(blog)
    gone = deleted(blog, 2)
    state, totals = run_batches([first], [gone], [first], [first, updated(blog, 2)])
    assert totals == {AUTHOR_A: 0}
    assert state[blog] == StoredBlog(AUTHOR_A, 2, False)


def test_replay_reports_stale_blogs_and_plans_nothing() -> None:
    blog = uuid.uuid4()
    plan = plan_batch(
        fold_newest_per_blog([published(blog)]), {blog: StoredBlog(AUTHOR_A, 1, True)}
    )
    assert plan.changes == ()
    assert plan.author_deltas == {}
    assert plan.stale == 1


def test_duplicate_in_one_batch_counts_once() -> None:
    blog = uuid.uuid4()
    event = published(blog)
    redelivered = Envelope.model_validate_json(event.model_dump_json())
    newest = fold_newest_per_blog([event, redelivered, event])
    assert list(newest) == [blog]
    assert newest[blog].event_id == event.event_id
    assert plan_batch(newest, {}).author_deltas == {AUTHOR_A: 1}


def test_same_version_from_two_relay_sends_keeps_the_first() -> None:
    blog = uuid.uuid4()
    first, second = published(blog), published(blog)  # same version, different event ids
    newest = fold_newest_per_blog([first, second])
    assert newest[blog].event_id == first.event_id


def test_out_of_order_within_a_batch_keeps_the_newest_version() -> None:
    blog = uuid.uuid4()
    newest = fold_newest_per_blog([deleted(blog, 3), published(blog), updated(blog, 2)])
    assert newest[blog].version == 3
    assert newest[blog].live is False
    # Published and deleted in one batch never counted: no author write at all.
    assert plan_batch(newest, {}).author_deltas == {}


def test_republish_after_delete_within_history_counts_by_live_flag() -> None:
    blog = uuid.uuid4()
    plan = plan_batch(
        fold_newest_per_blog([updated(blog, 4)]), {blog: StoredBlog(AUTHOR_A, 3, False)}
    )
    assert plan.author_deltas == {AUTHOR_A: 1}


def test_author_change_moves_the_blog_between_authors() -> None:
    blog = uuid.uuid4()
    plan = plan_batch(
        fold_newest_per_blog([updated(blog, 2, AUTHOR_B)]), {blog: StoredBlog(AUTHOR_A, 1, True)}
    )
    assert plan.author_deltas == {AUTHOR_A: -1, AUTHOR_B: 1}


def test_plan_orders_blogs_and_authors_for_lock_order() -> None:
    blogs = [uuid.uuid4() for _ in range(20)]
    authors = [uuid.uuid4() for _ in range(20)]
    plan = plan_batch(
        fold_newest_per_blog(published(b, a) for b, a in zip(blogs, authors, strict=True)), {}
    )
    assert [c.blog_id for c in plan.changes] == sorted(blogs)
    assert list(plan.author_deltas) == sorted(authors)


def test_ids_sort_by_their_int_exactly_as_uuids_sort() -> None:
    # PostgreSQL orders uuid bytewise, as UUID.__lt__ orders them; the cheap key must agree.
    ids = [uuid.uuid4() for _ in range(2000)] + [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)]
    assert sorted(ids, key=by_uuid) == sorted(ids)
    assert sorted(ids, key=by_uuid) == sorted(ids, key=lambda u: u.bytes)

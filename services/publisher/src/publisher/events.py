"""The one place where a blog's change becomes its event: the event is derived from the blog's
state after the change (deleted -> BlogDeleted, version 1 -> BlogPublished, else BlogUpdated),
so a write never has to say which event it emits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from blog_events import BlogDeleted, BlogPublished, BlogUpdated, Envelope, new_envelope

if TYPE_CHECKING:
    from publisher.store import Blog

BlogEvent = BlogPublished | BlogUpdated | BlogDeleted


def event_for(blog: Blog) -> BlogEvent:
    """The event that tells consumers the blog's state after its latest change."""
    if blog.deleted_at is not None:
        return BlogDeleted(
            blog_id=blog.id,
            author_id=blog.author_id,
            version=blog.version,
            deleted_at=blog.deleted_at,
        )
    if blog.version == 1:
        return BlogPublished(
            blog_id=blog.id,
            author_id=blog.author_id,
            version=blog.version,
            title=blog.title,
            body=blog.body,
            tags=tuple(blog.tags),
            published_at=blog.created_at,
        )
    return BlogUpdated(
        blog_id=blog.id,
        author_id=blog.author_id,
        version=blog.version,
        title=blog.title,
        body=blog.body,
        tags=tuple(blog.tags),
        published_at=blog.created_at,
        updated_at=blog.updated_at,
    )


def envelope_for(blog: Blog) -> Envelope:
    return new_envelope(event_for(blog))

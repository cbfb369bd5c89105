"""Event builders for tests: the events the publisher would emit for a series of blog changes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from blog_events import (
    BlogDeleted,
    BlogPublished,
    BlogUpdated,
    Envelope,
    EventDecodeError,
    decode_event,
    encode_event,
    new_envelope,
)
from service_kit.consumer import Decoder

# The blog contract's decoder, as the services pass it to their BatchConsumer.
BLOG_DECODER = Decoder(decode_event, (EventDecodeError,))

BlogPayload = BlogPublished | BlogUpdated | BlogDeleted

HISTORY_START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class BlogHistory:
    """Makes each blog's events with consecutive versions, as the publisher would, and remembers
    each blog's latest event (`last`), i.e. the state a consumer must end up with.

    Timestamps come from a clock that starts at `start` and advances one second per event, so
    later events are strictly newer and runs are reproducible.
    """

    def __init__(self, start: datetime = HISTORY_START) -> None:
        self.last: dict[uuid.UUID, BlogPayload] = {}
        self._clock = start

    def _tick(self) -> datetime:
        self._clock += timedelta(seconds=1)
        return self._clock

    def publish(
        self,
        author_id: uuid.UUID | None = None,
        *,
        title: str = "a title",
        body: str = "a body",
        tags: tuple[str, ...] = (),
        blog_id: uuid.UUID | None = None,
    ) -> Envelope:
        """A new blog (version 1); a fresh author and blog id unless given."""
        payload = BlogPublished(
            blog_id=blog_id or uuid.uuid4(),
            author_id=author_id or uuid.uuid4(),
            version=1,
            title=title,
            body=body,
            tags=tags,
            published_at=self._tick(),
        )
        self.last[payload.blog_id] = payload
        return new_envelope(payload)

    def update(
        self, blog_id: uuid.UUID, *, title: str | None = None, body: str = "a new body"
    ) -> Envelope:
        """The next version of a live blog; without a title, the old one marked with the version."""
        previous = self.last[blog_id]
        if isinstance(previous, BlogDeleted):
            raise ValueError(f"blog {blog_id} is deleted: the publisher would refuse the update")
        version = previous.version + 1
        payload = BlogUpdated(
            blog_id=blog_id,
            author_id=previous.author_id,
            version=version,
            title=title or f"{previous.title} (v{version})",
            body=body,
            tags=previous.tags,
            published_at=previous.published_at,
            updated_at=self._tick(),
        )
        self.last[blog_id] = payload
        return new_envelope(payload)

    def delete(self, blog_id: uuid.UUID) -> Envelope:
        """The tombstone of a live blog, one version after its latest."""
        previous = self.last[blog_id]
        if isinstance(previous, BlogDeleted):
            raise ValueError(f"blog {blog_id} is already deleted")
        payload = BlogDeleted(
            blog_id=blog_id,
            author_id=previous.author_id,
            version=previous.version + 1,
            deleted_at=self._tick(),
        )
        self.last[blog_id] = payload
        return new_envelope(payload)

    def live_blogs(self, author_id: uuid.UUID | None = None) -> set[uuid.UUID]:
        """Blogs not deleted (of one author, if given)."""
        return {
            blog_id
            for blog_id, event in self.last.items()
            if not isinstance(event, BlogDeleted)
            and (author_id is None or event.author_id == author_id)
        }


def as_record(envelope: Envelope) -> tuple[bytes, bytes]:
    """(key, value) of the Kafka message the relay would send for `envelope`."""
    return envelope.key.encode(), encode_event(envelope)

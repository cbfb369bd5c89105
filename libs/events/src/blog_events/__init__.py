"""The event contract of the blog platform (topic `blog-events`, JSON on the wire).

Every event is an `Envelope` whose `payload` is one of `BlogPublished`, `BlogUpdated`,
`BlogDeleted`, told apart by `event_type`. Each payload carries the blog's *state after* the
change and its `version` (1 on publish, +1 per update or delete): consumers apply an event only
when its version is newer than what they hold, which makes redelivery, duplicates and replays
no-ops by construction.
"""

from blog_events.models import (
    SCHEMA_VERSION,
    TOPIC,
    BlogDeleted,
    BlogEvent,
    BlogPublished,
    BlogUpdated,
    Envelope,
    EventDecodeError,
    decode_event,
    encode_event,
    new_envelope,
)

__all__ = [
    "SCHEMA_VERSION",
    "TOPIC",
    "BlogDeleted",
    "BlogEvent",
    "BlogPublished",
    "BlogUpdated",
    "Envelope",
    "EventDecodeError",
    "decode_event",
    "encode_event",
    "new_envelope",
]

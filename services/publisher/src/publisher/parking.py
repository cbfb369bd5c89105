"""Parked outbox rows: rows Kafka refuses for good (too large for the broker, invalid) are set
aside with the reason, so the rows behind them go on; an operator lists them and, once the cause
is fixed (e.g. the topic's `max.message.bytes` raised), puts them back in the relay's queue.

    python -m publisher outbox list-parked            # one JSON object per parked row
    python -m publisher outbox retry-parked --id 42   # (or --all) back to the relay's queue
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from aiokafka.errors import (
    InvalidMessageError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from publisher.auth import DbConnection

NOTIFY_CHANNEL = "publisher_outbox"

# Refusals that are about the record itself: the same bytes will be refused again, whatever the
# cluster does next. Parked. Everything else (unknown topic, authorization, not enough replicas,
# timeouts) is about the topic or the cluster: every row would fail alike, so the relay waits and
# retries instead (an operator fixes the cluster, not the rows; order is kept).
REFUSED_FOR_GOOD: tuple[type[Exception], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    InvalidMessageError,
)


def refused_for_good(exc: BaseException) -> bool:
    return isinstance(exc, REFUSED_FOR_GOOD)


@dataclass(frozen=True)
class ParkedRow:
    id: int
    blog_id: str
    version: int
    topic: str
    payload_bytes: int
    created_at: datetime
    parked_at: datetime
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "blog_id": self.blog_id,
            "version": self.version,
            "topic": self.topic,
            "payload_bytes": self.payload_bytes,
            "created_at": self.created_at.isoformat(),
            "parked_at": self.parked_at.isoformat(),
            "reason": self.reason,
        }


class Executes(Protocol):
    """A connection, or the relay's lock session (parking is fenced like marking)."""

    def execute(self, query: str, *args: Any) -> Awaitable[str]: ...


async def park(conn: Executes, row_id: int, reason: str) -> None:
    await conn.execute(
        "UPDATE publisher.outbox SET parked_at = now(), parked_reason = $2"
        " WHERE id = $1 AND sent_at IS NULL",
        row_id,
        reason,
    )


async def list_parked(conn: DbConnection) -> list[ParkedRow]:
    rows = await conn.fetch(
        "SELECT id, blog_id, version, topic, octet_length(payload) AS payload_bytes,"
        " created_at, parked_at, parked_reason"
        " FROM publisher.outbox WHERE parked_at IS NOT NULL AND sent_at IS NULL ORDER BY id"
    )
    return [
        ParkedRow(
            id=row["id"],
            blog_id=str(row["blog_id"]),
            version=row["version"],
            topic=row["topic"],
            payload_bytes=row["payload_bytes"],
            created_at=row["created_at"],
            parked_at=row["parked_at"],
            reason=row["parked_reason"] or "",
        )
        for row in rows
    ]


async def retry_parked(conn: DbConnection, ids: Sequence[int] | None) -> list[int]:
    """Put parked rows back in the relay's queue (all of them when `ids` is None) and wake the
    relay; the ids that were parked."""
    async with conn.transaction():
        if ids is None:
            rows = await conn.fetch(
                "UPDATE publisher.outbox SET parked_at = NULL, parked_reason = NULL"
                " WHERE parked_at IS NOT NULL AND sent_at IS NULL RETURNING id"
            )
        else:
            rows = await conn.fetch(
                "UPDATE publisher.outbox SET parked_at = NULL, parked_reason = NULL"
                " WHERE id = ANY($1::bigint[]) AND parked_at IS NOT NULL AND sent_at IS NULL"
                " RETURNING id",
                list(ids),
            )
        await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return sorted(row["id"] for row in rows)

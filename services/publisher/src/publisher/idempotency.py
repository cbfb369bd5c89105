"""Idempotency-Key (IETF draft-ietf-httpapi-idempotency-key-header): a client that did not get an
answer to a write retries it with the same key and gets the first answer again; nothing is
written twice.

Keys are per author. Inside the write's transaction: `pg_try_advisory_xact_lock` on the
(author, key) pair — held by another request means that one is still in flight (409, no waiting);
then the stored answer, if any: the same request gets it again, a different request with the
same key gets 422; otherwise the write happens and its answer is stored in the same transaction,
so the answer exists exactly when the write does. Keys expire (24 h by default) and are purged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from publisher.auth import DbConnection
from publisher.errors import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidIdempotencyKeyError,
)

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255


def parse_key(value: str | None) -> str | None:
    """The key of an `Idempotency-Key` header: a structured-field string (`"..."`, as the draft
    specifies) or, leniently, the bare text; 1..255 printable ASCII characters."""
    if value is None:
        return None
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not 1 <= len(key) <= MAX_KEY_CHARS or not all(" " <= c <= "~" for c in key):
        raise InvalidIdempotencyKeyError(
            f"{HEADER} must be 1..{MAX_KEY_CHARS} printable ASCII characters"
        )
    return key


def request_fingerprint(method: str, path: str, if_match: str | None, body: bytes) -> bytes:
    """What makes two requests "the same" for a key: method, path, precondition and the
    normalised body (so key order or whitespace in the JSON do not matter)."""
    digest = hashlib.sha256()
    for part in (method.upper(), path, if_match or ""):
        digest.update(part.encode())
        digest.update(b"\x00")
    digest.update(body)
    return digest.digest()


def lock_key(author_id: uuid.UUID, key: str) -> int:
    digest = hashlib.sha256(b"publisher.idempotency:" + author_id.bytes + key.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class IdempotentRequest:
    author_id: uuid.UUID
    key: str
    fingerprint: bytes


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


async def claim(conn: DbConnection, request: IdempotentRequest) -> StoredAnswer | None:
    """Inside the write's transaction: the answer already given to this request, or None when
    the write is to be done now (and this transaction holds the key until it ends)."""
    locked: bool = await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock($1)", lock_key(request.author_id, request.key)
    )
    if not locked:
        raise IdempotencyKeyInFlight(request.key)
    row = await conn.fetchrow(
        "SELECT request_hash, response_status, response_body, response_headers"
        " FROM publisher.idempotency_keys"
        " WHERE author_id = $1 AND key = $2 AND expires_at > now()",
        request.author_id,
        request.key,
    )
    if row is None:
        return None
    if bytes(row["request_hash"]) != request.fingerprint:
        raise IdempotencyKeyReused(request.key)
    return StoredAnswer(
        status=row["response_status"],
        body=json.loads(row["response_body"]),
        headers=json.loads(row["response_headers"]),
    )


async def remember(
    conn: DbConnection, request: IdempotentRequest, answer: StoredAnswer, ttl_s: float
) -> None:
    """Store the answer in the write's transaction (an expired entry of the key is replaced)."""
    await conn.execute(
        "INSERT INTO publisher.idempotency_keys"
        " (author_id, key, request_hash, response_status, response_body, response_headers,"
        "  expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))"
        " ON CONFLICT (author_id, key) DO UPDATE SET"
        " request_hash = EXCLUDED.request_hash, response_status = EXCLUDED.response_status,"
        " response_body = EXCLUDED.response_body,"
        " response_headers = EXCLUDED.response_headers,"
        " created_at = now(), expires_at = EXCLUDED.expires_at"
        " WHERE publisher.idempotency_keys.expires_at <= now()",
        request.author_id,
        request.key,
        request.fingerprint,
        answer.status,
        json.dumps(answer.body),
        json.dumps(answer.headers),
        ttl_s,
    )


async def purge_expired(pool: asyncpg.Pool, timeout_s: float) -> int:
    """Delete expired keys; how many."""
    async with pool.acquire(timeout=timeout_s) as conn:
        status: str = await conn.execute(
            "DELETE FROM publisher.idempotency_keys WHERE expires_at <= now()"
        )
    return int(status.split()[-1])

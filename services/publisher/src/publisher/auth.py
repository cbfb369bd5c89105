"""API tokens: the author identity comes only from the bearer token, never from the request."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Callable

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A plain connection or one borrowed from a pool: both run the same queries.
DbConnection = asyncpg.Connection | PoolConnectionProxy
# Where a lookup can run: a connection, or the pool (which lends one for the statement).
Queryable = DbConnection | asyncpg.Pool

TOKEN_BYTES = 32
# Real tokens are 43 characters; anything far longer is not one and is not even looked up.
MAX_TOKEN_CHARS = 200


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> bytes:
    # sha256 is enough: tokens are 32 random bytes, so there is nothing to brute-force or guess.
    return hashlib.sha256(token.encode()).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None when absent or malformed."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token or len(token) > MAX_TOKEN_CHARS:
        return None
    return token


async def author_for_token(conn: Queryable, token: str) -> uuid.UUID | None:
    return await author_for_hash(conn, hash_token(token))


async def author_for_hash(conn: Queryable, token_hash: bytes) -> uuid.UUID | None:
    author_id: uuid.UUID | None = await conn.fetchval(
        "SELECT author_id FROM publisher.api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        token_hash,
    )
    return author_id


class TokenCache:
    """Valid tokens seen in the last `ttl_s` seconds, so most writes skip the lookup statement
    (one of the two statements of a POST). Revocation is honoured within `ttl_s`: a revoked
    token's entry expires and is looked up again, and only valid tokens are kept (an unknown or
    revoked token is asked for every time). Bounded to `max_entries`, the oldest dropped first;
    keyed by the token's hash, so no token is held in clear. `ttl_s` = 0 turns it off."""

    def __init__(
        self,
        ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[bytes, tuple[uuid.UUID, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def author_for_token(self, conn: Queryable, token: str) -> uuid.UUID | None:
        if self.ttl_s <= 0:
            return await author_for_token(conn, token)
        token_hash = hash_token(token)
        entry = self._entries.get(token_hash)
        now = self._clock()
        if entry is not None:
            author_id, expires_at = entry
            if now < expires_at:
                return author_id
            del self._entries[token_hash]
        found = await author_for_hash(conn, token_hash)
        if found is not None:
            if len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest entry
            # Expiry counts from before the lookup: never longer than ttl_s after the answer.
            self._entries[token_hash] = (found, now + self.ttl_s)
        return found


async def create_author(conn: DbConnection, name: str) -> tuple[uuid.UUID, str]:
    """A new author and a first token for them; the token is shown once and stored only hashed."""
    author_id = uuid.uuid4()
    token = new_token()
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO publisher.authors (id, name) VALUES ($1, $2)", author_id, name
        )
        await conn.execute(
            "INSERT INTO publisher.api_tokens (token_hash, author_id) VALUES ($1, $2)",
            hash_token(token),
            author_id,
        )
    return author_id, token


async def revoke_token(conn: DbConnection, token: str) -> bool:
    """Revoke a token; False when it is unknown or already revoked."""
    status: str = await conn.execute(
        "UPDATE publisher.api_tokens SET revoked_at = now()"
        " WHERE token_hash = $1 AND revoked_at IS NULL",
        hash_token(token),
    )
    return status == "UPDATE 1"

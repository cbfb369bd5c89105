"""asyncpg settings shared by the services: the pool reset, and what a lost connection raises."""

from __future__ import annotations

import asyncpg


async def keep_session(_conn: asyncpg.Connection) -> None:
    """A pool's reset on release that does nothing (`create_pool(reset=keep_session)`).

    asyncpg's default sends `RESET ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); ...` at
    every release: one more round trip per request or batch. Only for pools whose connections
    never change session state (no SET, LISTEN, session advisory lock, temporary table or open
    cursor); asyncpg still rolls back a transaction left open before calling this."""


# What asyncpg raises when the connection is gone or unusable (the server unreachable, shutting
# down or restarting, the session ended): never a reason to blame the data. InternalClientError
# included: a statement sent after the server's FATAL was read but before the socket's close was
# seen finds the protocol still consuming that error.
CONNECTION_LOST: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

"""The relay's lock session: the dedicated PostgreSQL connection whose session-level advisory lock
makes one replica the relay leader. The leader also reads and marks the outbox through this
session, so a row can only be marked sent while the lock is held: the session *is* the lock, and
once PostgreSQL has ended it (and so freed the lock), every statement on it fails.

How long a dead leader keeps the lock, with T = `relay_lock_idle_timeout_s` (10 s) and
S = `relay_lock_statement_timeout_s` (10 s):

- frozen (SIGSTOP, a VM paused, a stuck event loop) or cut off from PostgreSQL while idle: the
  server ends a session that sent no statement for T (`idle_session_timeout`), releasing the
  lock T after the leader's last statement; a live replica touches its session every T/4
  (`heartbeat`), so it never gets there;
- frozen or cut off in the middle of a statement: `statement_timeout` = S cancels it, then the
  session is idle (T); `tcp_user_timeout` = T drops a connection whose data goes unacknowledged
  (a dead host or network path while the server sends); server-side TCP keepalives (5 s idle,
  every 2 s, 3 probes) find a vanished peer of an idle connection;
- `idle_in_transaction_session_timeout` = T too (the relay holds no transaction open; a bound
  anyway).

So the lock is free at most T after the leader's last statement (S + T if it froze mid-statement),
and a standby asking every `relay_standby_retry_s` (2 s) takes it at most that much later.

The other way round, a leader that cannot reach PostgreSQL must stop: every statement has a
client-side timeout (S + 2 s, after the server's), the socket has SO_KEEPALIVE with the same
timings, and a failed heartbeat or a terminated connection marks the session `lost`, which ends
the leadership before the next batch is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from service_kit.pools import CONNECTION_LOST

log = logging.getLogger(__name__)

# A statement failing with one of these: the session (and so the lock) is gone.
_SESSION_GONE: tuple[type[Exception], ...] = (*CONNECTION_LOST, OSError)
KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3
# The client waits this much longer than statement_timeout, so the server's cancel comes first.
CLIENT_TIMEOUT_MARGIN_S = 2.0


def session_settings(idle_timeout_s: float, statement_timeout_s: float) -> dict[str, str]:
    """The lock session's server settings (sent in the connection's startup packet)."""
    idle_ms = str(int(idle_timeout_s * 1000))
    return {
        "application_name": "publisher-relay",
        "idle_session_timeout": idle_ms,
        "idle_in_transaction_session_timeout": idle_ms,
        "statement_timeout": str(int(statement_timeout_s * 1000)),
        "tcp_keepalives_idle": str(KEEPALIVE_IDLE_S),
        "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL_S),
        "tcp_keepalives_count": str(KEEPALIVE_COUNT),
        "tcp_user_timeout": idle_ms,
    }


def enable_client_keepalive(conn: asyncpg.Connection, user_timeout_s: float) -> bool:
    """SO_KEEPALIVE (and TCP_USER_TIMEOUT) on the connection's own socket; asyncpg has no option
    for it. False when there is no TCP socket (a Unix socket needs none)."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", int(user_timeout_s * 1000)),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
    return True


class SessionLostError(Exception):
    """The lock session is gone (ended by the server, unreachable, heartbeat failed): whatever
    lock it held is free, and nothing may be marked through it any more."""


class LockSession:
    """One connection, used by one coroutine at a time (statements are serialized, the
    heartbeat included), touched at least every `heartbeat_s`."""

    def __init__(self, conn: asyncpg.Connection, idle_timeout_s: float, statement_timeout_s: float):
        self._conn = conn
        self._guard = asyncio.Lock()
        self._timeout_s = statement_timeout_s + CLIENT_TIMEOUT_MARGIN_S
        self.heartbeat_s = idle_timeout_s / 4
        self._last_used = time.monotonic()
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self._on_lost: list[Callable[[str], None]] = []
        self._closing = False
        conn.add_termination_listener(self._terminated)
        self._heartbeat = asyncio.create_task(self._beat(), name="relay-lock-heartbeat")

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        connect_timeout_s: float,
        idle_timeout_s: float,
        statement_timeout_s: float,
    ) -> LockSession:
        conn = await asyncpg.connect(
            dsn,
            timeout=connect_timeout_s,
            command_timeout=statement_timeout_s + CLIENT_TIMEOUT_MARGIN_S,
            server_settings=session_settings(idle_timeout_s, statement_timeout_s),
        )
        enable_client_keepalive(conn, idle_timeout_s)
        return cls(conn, idle_timeout_s, statement_timeout_s)

    @property
    def backend_pid(self) -> int:
        return self._conn.get_server_pid()

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once the session is lost (at once if it already is)."""
        if self.lost_reason is not None:
            callback(self.lost_reason)
        else:
            self._on_lost.append(callback)

    async def try_lock(self, key: int) -> bool:
        locked: bool = await self.fetchval("SELECT pg_try_advisory_lock($1)", key)
        return locked

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self._using():
            rows: list[asyncpg.Record] = await self._conn.fetch(
                query, *args, timeout=self._timeout_s
            )
            return rows

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self._using():
            return await self._conn.fetchval(query, *args, timeout=self._timeout_s)

    async def execute(self, query: str, *args: Any) -> str:
        async with self._using():
            status: str = await self._conn.execute(query, *args, timeout=self._timeout_s)
            return status

    async def add_listener(self, channel: str, callback: Callable[..., Any]) -> None:
        async with self._using():
            await self._conn.add_listener(channel, callback)

    async def close(self) -> None:
        """Close the connection (which releases the lock); never raises."""
        self._closing = True
        self._heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._heartbeat
        try:
            await asyncio.wait_for(self._conn.close(), 5.0)
        except Exception:
            self._conn.terminate()

    @contextlib.asynccontextmanager
    async def _using(self) -> Any:
        async with self._guard:
            if self.lost_reason is not None:
                raise SessionLostError(self.lost_reason)
            try:
                yield
            except _SESSION_GONE as exc:
                self._lose(f"{type(exc).__name__}: {exc}")
                raise SessionLostError(self.lost_reason) from exc
            except TimeoutError as exc:
                # The server did not answer within statement_timeout + margin: unreachable.
                self._lose("no answer within the statement timeout")
                raise SessionLostError(self.lost_reason) from exc
            finally:
                self._last_used = time.monotonic()

    async def _beat(self) -> None:
        while self.lost_reason is None:
            due = self._last_used + self.heartbeat_s - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
                continue
            try:
                await self.fetchval("SELECT 1")
            except SessionLostError:
                return
            except Exception as exc:  # e.g. the statement cancelled: the session is unhealthy
                self._lose(f"heartbeat failed: {type(exc).__name__}: {exc}")
                return

    def _terminated(self, _conn: object) -> None:
        if self._closing:
            return
        self._lose("connection closed (ended by the server or the network)")

    def _lose(self, reason: str) -> None:
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        self.lost.set()
        for callback in self._on_lost:
            callback(reason)
        self._on_lost.clear()


def relay_identity() -> str:
    """Who marks rows sent (`outbox.sent_by`): the host (the pod's name on Kubernetes) and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"

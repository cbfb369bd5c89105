"""The relay's lock session against the real PostgreSQL: its timeouts and keepalives are set, a
session that stops talking loses the lock within the idle timeout (a frozen leader), and a lost
session marks nothing (the fence)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import asyncpg
import pytest

from blog_testkit import wait_until
from publisher.app import MIGRATIONS_DIR, SCHEMA
from publisher.metrics import PublisherMetrics
from publisher.relay import RELAY_LOCK_KEY, OutboxRelay
from publisher.relay_lock import LockSession, SessionLostError
from publisher.settings import PublisherSettings
from service_kit.migrations import apply_migrations

pytestmark = pytest.mark.integration


async def open_session(dsn: str, idle_timeout_s: float = 10.0) -> LockSession:
    return await LockSession.open(
        dsn, connect_timeout_s=5, idle_timeout_s=idle_timeout_s, statement_timeout_s=10
    )


async def test_the_lock_session_has_its_timeouts_and_keepalives(database_url: str) -> None:
    session = await open_session(database_url)
    try:
        shown = {
            name: await session.fetchval(f"SHOW {name}")
            for name in (
                "idle_session_timeout",
                "idle_in_transaction_session_timeout",
                "statement_timeout",
                "tcp_keepalives_idle",
                "tcp_keepalives_interval",
                "tcp_keepalives_count",
                "tcp_user_timeout",
                "application_name",
            )
        }
        transport = getattr(session._conn, "_transport")  # noqa: B009 - the socket's options
        sock = transport.get_extra_info("socket")
        keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        keepidle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
    finally:
        await session.close()
    assert shown["idle_session_timeout"] == "10s"
    assert shown["idle_in_transaction_session_timeout"] == "10s"
    assert shown["statement_timeout"] == "10s"
    assert shown["application_name"] == "publisher-relay"
    if sock.family in (socket.AF_INET, socket.AF_INET6):  # TCP (ignored on a Unix socket)
        assert (shown["tcp_keepalives_idle"], shown["tcp_keepalives_interval"]) == ("5", "2")
        assert shown["tcp_keepalives_count"] == "3"
        assert shown["tcp_user_timeout"] == "10000"  # ms
        assert keepalive == 1
        assert keepidle == 5


async def test_a_live_session_keeps_the_lock_past_the_idle_timeout(database_url: str) -> None:
    session = await open_session(database_url, idle_timeout_s=2)
    other = await open_session(database_url, idle_timeout_s=2)
    try:
        assert await session.try_lock(RELAY_LOCK_KEY)
        idle_until = asyncio.get_running_loop().time() + 5  # 2.5 idle timeouts, heartbeats only

        async def idle_long_enough() -> bool:
            return asyncio.get_running_loop().time() >= idle_until

        await wait_until(idle_long_enough, timeout=10, what="5 s without a statement of ours")
        assert session.lost_reason is None
        assert not await other.try_lock(RELAY_LOCK_KEY)
    finally:
        await session.close()
        await other.close()


async def test_a_frozen_session_loses_the_lock_within_the_idle_timeout(database_url: str) -> None:
    session = await open_session(database_url, idle_timeout_s=2)
    standby = await open_session(database_url, idle_timeout_s=2)
    try:
        assert await session.try_lock(RELAY_LOCK_KEY)
        session._heartbeat.cancel()  # frozen: no statement any more (as under SIGSTOP)
        frozen_at = time.monotonic()

        async def standby_takes_it() -> bool:
            return await standby.try_lock(RELAY_LOCK_KEY)

        await wait_until(standby_takes_it, timeout=15, what="the lock freed", interval=0.1)
        freed_after = time.monotonic() - frozen_at
        assert 1.5 <= freed_after <= 2 + 3  # the idle timeout, plus a loaded machine's slack

        async def noticed() -> bool:
            return session.lost.is_set()

        await wait_until(noticed, timeout=10, what="the frozen session knows it is gone")
        with pytest.raises(SessionLostError):
            await session.fetchval("SELECT 1")
    finally:
        await session.close()
        await standby.close()


async def test_a_lost_session_marks_nothing(database_url: str, topic: str) -> None:
    await apply_migrations(database_url, SCHEMA, MIGRATIONS_DIR)
    db = await asyncpg.connect(database_url)
    settings = PublisherSettings(database_url=database_url, topic=topic)
    relay = OutboxRelay(settings, PublisherMetrics())
    session = await open_session(database_url)
    try:
        row_id = await db.fetchval(
            "INSERT INTO publisher.outbox (event_id, blog_id, version, topic, key, payload)"
            " VALUES ($1, $2, 1, $3, 'k', 'x') RETURNING id",
            uuid.uuid4(),
            uuid.uuid4(),
            topic,
        )
        assert await session.try_lock(RELAY_LOCK_KEY)
        # The server ends the leader's session (as idle_session_timeout does to a frozen one)
        # while Kafka's acknowledgement is on its way.
        await db.execute("SELECT pg_terminate_backend($1)", session.backend_pid)
        with pytest.raises(SessionLostError):
            await relay._mark_sent(session, [(row_id, 0, 42)])
        row = await db.fetchrow(
            "SELECT sent_at, sent_by, kafka_offset FROM publisher.outbox WHERE id = $1", row_id
        )
        assert row is not None
        assert (row["sent_at"], row["sent_by"], row["kafka_offset"]) == (None, None, None)

        # A live leader marks once; a second mark of the same row changes nothing.
        leader = await open_session(database_url)
        try:
            await relay._mark_sent(leader, [(row_id, 0, 42)])
            await relay._mark_sent(leader, [(row_id, 5, 99)])
        finally:
            await leader.close()
        row = await db.fetchrow(
            "SELECT sent_by, kafka_partition, kafka_offset FROM publisher.outbox WHERE id = $1",
            row_id,
        )
        assert row is not None
        assert (row["sent_by"], row["kafka_partition"], row["kafka_offset"]) == (
            relay.identity,
            0,
            42,
        )
    finally:
        await session.close()
        await db.close()

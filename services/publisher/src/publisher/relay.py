"""The outbox relay: publishes outbox rows to Kafka in id order and marks them sent.

Only one relay is active across replicas: the leader holds a PostgreSQL advisory lock on a
dedicated connection, the others stand by and retry. One sender means per-key order is kept and
no row is sent twice by design. A row can still be sent twice if the leader crashes (or loses
its connection) after Kafka acknowledged it and before it was marked sent; consumers absorb
that by applying an event only when its version is newer than what they hold.

A row Kafka refuses for good (`parking.REFUSED_FOR_GOOD`: too large, invalid) is parked with its
reason, and the rows behind it go on. Since a refused record can take the other records of its
produce batch down with it, the refused rows are first sent again one by one with a fresh
producer: only those refused alone are parked. Any other failure (Kafka unreachable, unknown
topic, authorization, not enough replicas) is the cluster's, not the row's: the relay backs off
and retries the same rows, in order, until it is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from publisher.metrics import PublisherMetrics
from publisher.parking import NOTIFY_CHANNEL, park, refused_for_good
from publisher.settings import PublisherSettings
from service_kit.backoff import Backoff
from service_kit.kafka_admin import admin_client, produce_blockers, unusable_topics

log = logging.getLogger(__name__)
# Advisory locks are per database, so one key serves every deployment of the schema.
RELAY_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"publisher.outbox-relay").digest()[:8], "big", signed=True
)
_TOPIC_CHECK_TIMEOUT_S = 15.0

# topic -> why it cannot be written yet ("does not exist", ...); empty when it can.
TopicCheck = Callable[[str, str], Awaitable[Mapping[str, str]]]
# Why acks=all writes to a topic fail right now, in words ("" when nothing is visibly wrong).
SendDiagnosis = Callable[[str, str], Awaitable[str]]


async def _unusable_topic(bootstrap: str, topic: str) -> Mapping[str, str]:
    async with admin_client(bootstrap) as admin:
        return await unusable_topics(admin, [topic])


class OutboxRelay:
    def __init__(
        self,
        settings: PublisherSettings,
        metrics: PublisherMetrics,
        topic_check: TopicCheck | None = None,
        send_diagnosis: SendDiagnosis | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._topic_check = topic_check or _unusable_topic
        self._send_diagnosis = send_diagnosis or produce_blockers
        # The last "why the relay waits" logged, so a long wait is logged once, not per retry.
        self._waiting_reason: str | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._is_leader = False
        self._kafka_ok: bool | None = None

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    @property
    def kafka_ok(self) -> bool | None:
        """Whether the last attempt to reach Kafka worked (None before the first one)."""
        return self._kafka_ok

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Compete for leadership and relay while leading, until stop()."""
        backoff = Backoff(self._settings.relay_retry_initial_s, self._settings.relay_retry_max_s)
        while not self._stopping.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._settings.dsn, timeout=self._settings.db_timeout_s
                )
                if not await self._acquire_leadership(conn):
                    return
                self._set_leader(True)
                log.info("outbox relay: leader (advisory lock %d held)", RELAY_LOCK_KEY)
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                backoff.reset()
                await self._relay_while_leader(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning("outbox relay: database error (%s); retrying in %.1fs", exc, delay)
                await self._sleep(delay)
            finally:
                if self._is_leader:
                    log.info("outbox relay: leadership released")
                self._set_leader(False)
                if conn is not None:
                    # Closing the session releases the advisory lock for a standby replica.
                    await _close_quietly(conn)

    async def _acquire_leadership(self, conn: asyncpg.Connection) -> bool:
        """Wait until this session holds the relay lock; False if stopped first."""
        announced = False
        while not self._stopping.is_set():
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                return True
            if not announced:
                log.info("outbox relay: standby (another replica holds the lock)")
                announced = True
            await self._sleep(self._settings.relay_standby_retry_s)
        return False

    async def _relay_while_leader(self, conn: asyncpg.Connection) -> None:
        settings = self._settings
        kafka_backoff = Backoff(settings.relay_retry_initial_s, settings.relay_retry_max_s)
        producer: AIOKafkaProducer | None = None
        topics_ready = False
        try:
            while not self._stopping.is_set():
                if producer is None:
                    try:
                        if not topics_ready:
                            # The publisher team creates the topic (`topics apply`); the relay
                            # waits for it, the rows stay in the outbox meanwhile.
                            problems = await asyncio.wait_for(
                                self._topic_check(settings.kafka_bootstrap_servers, settings.topic),
                                _TOPIC_CHECK_TIMEOUT_S,
                            )
                            if problems:
                                self._kafka_ok = False
                                self._log_waiting(
                                    f"topic {settings.topic} {problems[settings.topic]}: create it "
                                    "with `python -m publisher topics apply` (`make topics`); "
                                    "writes stay in the outbox until then"
                                )
                                await conn.fetchval("SELECT 1")
                                await self._sleep(kafka_backoff.next_delay())
                                continue
                            topics_ready = True
                        producer = await self._start_producer()
                    except Exception as exc:
                        self._kafka_ok = False
                        delay = kafka_backoff.next_delay()
                        log.warning(
                            "outbox relay: Kafka unreachable (%s); retry in %.1fs", exc, delay
                        )
                        # Touch the lock session so a lost database connection ends leadership.
                        await conn.fetchval("SELECT 1")
                        await self._sleep(delay)
                        continue
                # Cleared before the read: a NOTIFY arriving after it wakes the next wait.
                self._wake.clear()
                rows = await conn.fetch(
                    "SELECT id, blog_id, version, topic, key, payload FROM publisher.outbox"
                    " WHERE sent_at IS NULL AND parked_at IS NULL ORDER BY id LIMIT $1",
                    settings.relay_batch,
                )
                if not rows:
                    await self._wait_for_work()
                    continue
                started = time.perf_counter()
                delivered, refused, error = await _send_batch(
                    producer,
                    rows,
                    slow_after_s=settings.kafka_request_timeout_ms / 1000,
                    on_slow=self._explain_slow_send,
                )
                await _mark_sent(conn, delivered)
                self._metrics.relay_sent.inc(len(delivered))
                if error is None and refused:
                    # Which of them does Kafka refuse alone? A fresh producer: the old one's
                    # idempotence state for those partitions is not to be trusted any more.
                    await _stop_quietly(producer)
                    producer = None
                    try:
                        producer = await self._start_producer()
                        error = await self._send_alone(conn, producer, refused)
                    except Exception as exc:
                        error = exc
                if error is None:
                    self._kafka_ok = True
                    self._log_waiting(None)
                    kafka_backoff.reset()
                    self._metrics.relay_batch_duration.observe(time.perf_counter() - started)
                    continue
                # Rows not delivered stay unsent and go out again with a fresh producer.
                self._kafka_ok = False
                self._metrics.relay_send_failures.inc()
                delay = kafka_backoff.next_delay()
                log.warning(
                    "outbox relay: send failed (%r); %d of %d delivered; retry in %.1fs",
                    error,
                    len(delivered),
                    len(rows),
                    delay,
                )
                await self._explain_send_failure()
                if producer is not None:
                    await _stop_quietly(producer)
                producer = None
                await self._sleep(delay)
        finally:
            if producer is not None:
                await _stop_quietly(producer)

    async def _send_alone(
        self, conn: asyncpg.Connection, producer: AIOKafkaProducer, rows: Sequence[asyncpg.Record]
    ) -> BaseException | None:
        """Send each row on its own, in order: delivered ones are marked sent, those refused for
        good parked; the first other error stops it (returned)."""
        for row in rows:
            try:
                sent = await producer.send_and_wait(
                    row["topic"], value=bytes(row["payload"]), key=row["key"].encode()
                )
            except Exception as exc:
                if not refused_for_good(exc):
                    return exc
                reason = (
                    f"{type(exc).__name__}: {exc or 'refused by Kafka'} "
                    f"(payload {len(row['payload'])} bytes, topic {row['topic']})"
                )
                await park(conn, row["id"], reason)
                self._metrics.relay_parked.inc()
                log.warning(
                    "outbox relay: parked row %d (blog %s version %d): %s; "
                    "see `python -m publisher outbox list-parked`",
                    row["id"],
                    row["blog_id"],
                    row["version"],
                    reason,
                )
                continue
            await _mark_sent(conn, [(row["id"], sent.partition, sent.offset)])
            self._metrics.relay_sent.inc()
        return None

    def _log_waiting(self, reason: str | None) -> None:
        """Say why the relay waits, once per reason (and once when it no longer waits)."""
        if reason == self._waiting_reason:
            return
        if reason is None:
            log.info("outbox relay: sending again (was waiting: %s)", self._waiting_reason)
        else:
            log.warning("outbox relay: waiting: %s", reason)
        self._waiting_reason = reason

    async def _explain_slow_send(self, pending: int) -> None:
        """Rows Kafka has not acknowledged for a while (the producer keeps retrying them)."""
        await self._explain_send_failure(f"{pending} row(s) unacknowledged, the producer retries")

    async def _explain_send_failure(self, context: str = "") -> None:
        """Ask the cluster why sends fail or hang (e.g. fewer in-sync replicas than
        min.insync.replicas: the idempotent producer retries NOT_ENOUGH_REPLICAS silently until
        it succeeds) and log it once per distinct reason."""
        settings = self._settings
        try:
            why = await asyncio.wait_for(
                self._send_diagnosis(settings.kafka_bootstrap_servers, settings.topic),
                _TOPIC_CHECK_TIMEOUT_S,
            )
        except Exception as exc:
            why = f"no broker answered why ({type(exc).__name__})"
        if why:
            detail = f" ({context})" if context else ""
            self._log_waiting(f"{why}{detail}; unsent rows stay in the outbox and are retried")

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=self._settings.kafka_request_timeout_ms,
            max_request_size=2 * 1024 * 1024,
            metadata_max_age_ms=self._settings.kafka_metadata_max_age_ms,
        )
        try:
            await producer.start()
        except BaseException:
            await _stop_quietly(producer)
            raise
        self._kafka_ok = True
        return producer

    def _on_notify(self, *_args: Any) -> None:
        self._wake.set()

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self._settings.relay_poll_interval_s)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, cut short by stop()."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _set_leader(self, leader: bool) -> None:
        self._is_leader = leader
        self._metrics.relay_is_leader.set(1 if leader else 0)


async def _send_batch(
    producer: AIOKafkaProducer,
    rows: Sequence[asyncpg.Record],
    *,
    slow_after_s: float | None = None,
    on_slow: Callable[[int], Awaitable[None]] | None = None,
) -> tuple[list[tuple[int, int, int]], list[asyncpg.Record], BaseException | None]:
    """Send the rows in order. Returns (outbox id, partition, offset) of those Kafka
    acknowledged, the rows it refused for good (`parking.REFUSED_FOR_GOOD`, in id order), and
    the first other error, if any (rows after it are not sent). The idempotent producer retries
    retriable errors (e.g. not enough in-sync replicas) until they succeed: every
    `slow_after_s` without all answers, `on_slow(pending rows)` is awaited (to say why), and
    the wait goes on."""
    futures: list[tuple[asyncpg.Record, asyncio.Future[RecordMetadata]]] = []
    refused: list[asyncpg.Record] = []
    error: BaseException | None = None
    for row in rows:
        try:
            future = await producer.send(
                row["topic"], value=bytes(row["payload"]), key=row["key"].encode()
            )
        except Exception as exc:
            if refused_for_good(exc):  # refused by the client already (over max_request_size)
                refused.append(row)
                continue
            error = exc
            break
        futures.append((row, future))
    pending: set[asyncio.Future[RecordMetadata]] = {future for _, future in futures}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=slow_after_s)
        if pending and on_slow is not None:
            await on_slow(len(pending))
    delivered: list[tuple[int, int, int]] = []
    for row, future in futures:
        failure = future.exception()
        if failure is not None:
            if refused_for_good(failure):
                refused.append(row)
            else:
                error = error or failure
        else:
            result = future.result()
            delivered.append((row["id"], result.partition, result.offset))
    refused.sort(key=lambda row: row["id"])
    return delivered, refused, error


async def _mark_sent(conn: asyncpg.Connection, delivered: list[tuple[int, int, int]]) -> None:
    if not delivered:
        return
    ids, partitions, offsets = zip(*delivered, strict=True)
    await conn.execute(
        "UPDATE publisher.outbox AS o"
        " SET sent_at = now(), kafka_partition = d.kafka_partition, kafka_offset = d.kafka_offset"
        " FROM unnest($1::bigint[], $2::integer[], $3::bigint[])"
        "   AS d(id, kafka_partition, kafka_offset)"
        " WHERE o.id = d.id",
        list(ids),
        list(partitions),
        list(offsets),
    )


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except Exception as exc:
        log.debug("outbox relay: producer stop failed: %r", exc)


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 5.0)
    except Exception:
        conn.terminate()

"""The outbox relay: publishes outbox rows to Kafka in id order and marks them sent.

Only one relay is active across replicas: the leader holds a PostgreSQL advisory lock on a
dedicated session (`publisher.relay_lock`: keepalives, statement and idle-session timeouts bound
how long a frozen or cut-off leader keeps it), the others stand by and retry. One sender means
per-key order is kept and no row is sent twice by design. A row can still be sent twice if the
leader crashes, freezes or loses its session after Kafka acknowledged it and before it was
marked sent; consumers absorb that by applying an event only when its version is newer than
what they hold. Marks are fenced: they go through the lock session, so a leader whose session
was ended (its lock taken over) cannot mark anything, and a row is never marked twice.

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
from aiokafka import errors as kafka_errors
from aiokafka.structs import RecordMetadata

from publisher.metrics import PublisherMetrics
from publisher.parking import NOTIFY_CHANNEL, park, refused_for_good
from publisher.relay_lock import LockSession, SessionLostError, relay_identity
from publisher.settings import PublisherSettings
from service_kit import tracing
from service_kit.backoff import Backoff
from service_kit.kafka_admin import admin_client, produce_blockers, unusable_topics
from service_kit.kafka_clients import client_options
from service_kit.logs import log_context

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


def send_failure_reason(exc: BaseException) -> str:
    """The `reason` label of publisher_relay_send_failures_total (a fixed, small set)."""
    if refused_for_good(exc):
        return "record_refused"
    if isinstance(
        exc, kafka_errors.NotEnoughReplicasError | kafka_errors.NotEnoughReplicasAfterAppendError
    ):
        return "not_enough_replicas"
    if isinstance(exc, kafka_errors.UnknownTopicOrPartitionError):
        return "topic_missing"
    if isinstance(
        exc,
        kafka_errors.TopicAuthorizationFailedError
        | kafka_errors.ClusterAuthorizationFailedError
        | kafka_errors.TransactionalIdAuthorizationFailed
        | kafka_errors.AuthenticationFailedError,
    ):
        return "authorization"
    if isinstance(
        exc, TimeoutError | kafka_errors.KafkaTimeoutError | kafka_errors.RequestTimedOutError
    ):
        return "timeout"
    if isinstance(
        exc,
        kafka_errors.KafkaConnectionError
        | kafka_errors.NoBrokersAvailable
        | kafka_errors.NodeNotReadyError
        | kafka_errors.LeaderNotAvailableError
        | kafka_errors.NotLeaderForPartitionError
        | OSError,
    ):
        return "kafka_unreachable"
    return "other"


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
        self.identity = relay_identity()

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
        # The relay's own statements (polls, marks, heartbeats) are plumbing, not traces; its
        # Kafka sends are traced in each row's own context (see _send_row).
        with tracing.suppressed():
            await self._run()

    async def _run(self) -> None:
        settings = self._settings
        backoff = Backoff(settings.relay_retry_initial_s, settings.relay_retry_max_s)
        while not self._stopping.is_set():
            session: LockSession | None = None
            try:
                session = await LockSession.open(
                    settings.dsn,
                    connect_timeout_s=settings.db_timeout_s,
                    idle_timeout_s=settings.relay_lock_idle_timeout_s,
                    statement_timeout_s=settings.relay_lock_statement_timeout_s,
                )
                if not await self._acquire_leadership(session):
                    return
                self._set_leader(True)
                session.on_lost(self._on_session_lost)
                log.info(
                    "outbox relay: leader as %s (advisory lock %d held by backend %d)",
                    self.identity,
                    RELAY_LOCK_KEY,
                    session.backend_pid,
                )
                await session.add_listener(NOTIFY_CHANNEL, self._on_notify)
                backoff.reset()
                await self._relay_while_leader(session)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next_delay()
                if self._is_leader and isinstance(exc, SessionLostError):
                    self._metrics.relay_leadership_lost.inc()
                    log.warning(
                        "outbox relay: leadership lost, the lock session is gone (%s); nothing "
                        "more is marked sent by this replica, which stands by again",
                        exc,
                    )
                else:
                    log.warning("outbox relay: database error (%s); retrying in %.1fs", exc, delay)
                self._set_leader(False)
                # Closed before the pause: a lock still held is freed for a standby at once.
                await self._close(session)
                session = None
                await self._sleep(delay)
            finally:
                await self._close(session)

    async def _close(self, session: LockSession | None) -> None:
        if self._is_leader:
            log.info("outbox relay: leadership released")
        self._set_leader(False)
        if session is not None:
            # Closing the session releases the advisory lock for a standby replica.
            await session.close()

    async def _acquire_leadership(self, session: LockSession) -> bool:
        """Wait until this session holds the relay lock; False if stopped first."""
        announced = False
        while not self._stopping.is_set():
            if await session.try_lock(RELAY_LOCK_KEY):
                return True
            if not announced:
                log.info("outbox relay: standby (another replica holds the lock)")
                announced = True
            await self._sleep(self._settings.relay_standby_retry_s)
        return False

    def _on_session_lost(self, reason: str) -> None:
        # At once, not at the next statement: the gauge says it, and a wait is cut short.
        if self._is_leader:
            self._metrics.relay_is_leader.set(0)
        self._wake.set()

    async def _relay_while_leader(self, session: LockSession) -> None:
        settings = self._settings
        kafka_backoff = Backoff(settings.relay_retry_initial_s, settings.relay_retry_max_s)
        producer: AIOKafkaProducer | None = None
        topics_ready = False
        try:
            while not self._stopping.is_set():
                if session.lost_reason is not None:
                    raise SessionLostError(session.lost_reason)
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
                                self._count_failure("topic_missing")
                                self._log_waiting(
                                    f"topic {settings.topic} {problems[settings.topic]}: create it "
                                    "with `python -m publisher topics apply` (`make topics`); "
                                    "writes stay in the outbox until then"
                                )
                                await self._sleep(kafka_backoff.next_delay())
                                continue
                            topics_ready = True
                        producer = await self._start_producer()
                    except Exception as exc:
                        self._kafka_ok = False
                        self._count_failure(send_failure_reason(exc))
                        delay = kafka_backoff.next_delay()
                        log.warning(
                            "outbox relay: Kafka unreachable (%s); retry in %.1fs", exc, delay
                        )
                        await self._sleep(delay)
                        continue
                # Cleared before the read: a NOTIFY arriving after it wakes the next wait.
                self._wake.clear()
                rows = await session.fetch(
                    "SELECT id, event_id, blog_id, version, topic, key, payload, traceparent"
                    " FROM publisher.outbox"
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
                await self._mark_sent(session, delivered)
                if error is None and refused:
                    # Which of them does Kafka refuse alone? A fresh producer: the old one's
                    # idempotence state for those partitions is not to be trusted any more.
                    await _stop_quietly(producer)
                    producer = None
                    try:
                        producer = await self._start_producer()
                        error = await self._send_alone(session, producer, refused)
                    except SessionLostError:
                        raise
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
                self._count_failure(send_failure_reason(error))
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

    async def _mark_sent(self, session: LockSession, delivered: list[tuple[int, int, int]]) -> None:
        """Mark delivered rows sent, through the lock session: fails (SessionLostError) once the
        session is gone, so a leader that lost its lock marks nothing; `sent_at IS NULL` keeps
        the first mark of a row."""
        if not delivered:
            return
        ids, partitions, offsets = zip(*delivered, strict=True)
        try:
            await session.execute(
                "UPDATE publisher.outbox AS o SET sent_at = now(), sent_by = $4,"
                " kafka_partition = d.kafka_partition, kafka_offset = d.kafka_offset"
                " FROM unnest($1::bigint[], $2::integer[], $3::bigint[])"
                "   AS d(id, kafka_partition, kafka_offset)"
                " WHERE o.id = d.id AND o.sent_at IS NULL",
                list(ids),
                list(partitions),
                list(offsets),
                self.identity,
            )
        except SessionLostError:
            log.warning(
                "outbox relay: %d row(s) Kafka acknowledged were not marked sent (the lock "
                "session is gone); the leader sends them again, consumers skip the duplicates",
                len(delivered),
            )
            raise
        self._metrics.relay_sent.inc(len(delivered))

    async def _send_alone(
        self, session: LockSession, producer: AIOKafkaProducer, rows: Sequence[asyncpg.Record]
    ) -> BaseException | None:
        """Send each row on its own, in order: delivered ones are marked sent, those refused for
        good parked; the first other error stops it (returned)."""
        for row in rows:
            try:
                sent = await (await _send_row(producer, row))
            except Exception as exc:
                if not refused_for_good(exc):
                    return exc
                reason = (
                    f"{type(exc).__name__}: {exc or 'refused by Kafka'} "
                    f"(payload {len(row['payload'])} bytes, topic {row['topic']})"
                )
                if session.lost_reason is not None:
                    raise SessionLostError(session.lost_reason) from None
                await park(session, row["id"], reason)
                self._metrics.relay_parked.inc()
                self._count_failure("record_refused")
                with log_context(**_row_log_fields(row)):
                    log.warning(
                        "outbox relay: parked row %d (blog %s version %d): %s; "
                        "see `python -m publisher outbox list-parked`",
                        row["id"],
                        row["blog_id"],
                        row["version"],
                        reason,
                    )
                continue
            await self._mark_sent(session, [(row["id"], sent.partition, sent.offset)])
        return None

    def _count_failure(self, reason: str) -> None:
        self._metrics.relay_send_failures.labels(reason=reason).inc()

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
            **client_options(),
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


def _row_log_fields(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "event_id": row["event_id"],
        "blog_id": row["blog_id"],
        "trace_id": tracing.trace_id_of(row["traceparent"]),
    }


async def _send_row(
    producer: AIOKafkaProducer, row: asyncpg.Record
) -> asyncio.Future[RecordMetadata]:
    """Hand one row to the producer; the future resolves once Kafka acknowledged it. The row's
    trace context (the write's request) goes on the record as its `traceparent` header: with
    tracing on, through the send span the aiokafka instrumentation opens in that context (its
    child); with tracing off, as stored."""
    traceparent: str | None = row["traceparent"]
    future: asyncio.Future[RecordMetadata]
    if tracing.enabled():
        with tracing.in_remote_context(traceparent):
            future = await producer.send(
                row["topic"], value=bytes(row["payload"]), key=row["key"].encode()
            )
        return future
    future = await producer.send(
        row["topic"],
        value=bytes(row["payload"]),
        key=row["key"].encode(),
        headers=[(tracing.TRACEPARENT, traceparent.encode())] if traceparent else None,
    )
    return future


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
            future = await _send_row(producer, row)
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


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except Exception as exc:
        log.debug("outbox relay: producer stop failed: %r", exc)

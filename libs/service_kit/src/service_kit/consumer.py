"""The batch consumer every consumer group uses: at-least-once delivery from Kafka, turned into
exactly-once *effects* by the handler's idempotence, with offsets committed only after the
handler has made the batch durable.

One loop per instance: `getmany` -> decode each record -> undecodable ones go to the dead-letter
topic (headers say why and where from) -> `handler(good events)`, retried with bounded exponential
backoff and full jitter while it raises -> commit `last offset + 1` of every partition in the
batch. The batch in hand is processed and committed under a lock that the rebalance listener
also takes, so a revoked partition is never committed by two owners nor skipped. `stop()` lets the
batch in hand finish and commit (it only cuts a retry backoff short), then leaves the group.

While the handler of batch N runs (waiting on its database), the next batch is polled and decoded
(at most one batch ahead), so the loop does not idle on I/O; handler calls and commits stay
strictly sequential and in order. A batch read ahead is dropped (not handled, not committed) if
a rebalance happened since its poll or the consumer is stopping: its records are delivered again
from the last commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from blog_events import Envelope, EventDecodeError, decode_event
from service_kit.backoff import backoff_delay

log = logging.getLogger(__name__)

# A Kafka header has no hard limit, but a reason is for humans: keep it short.
DLQ_REASON_MAX_BYTES = 1000
DLQ_HEADER_PREFIX = "dlq-"
CRASH_EXIT_CODE = 137  # what a SIGKILL looks like to a supervisor
# Records decoded between two yields to the event loop while reading ahead (~0.5 ms of CPU).
DECODE_SLICE = 50


@dataclass(frozen=True)
class ConsumedEvent:
    envelope: Envelope
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


BatchHandler = Callable[[Sequence[ConsumedEvent]], Awaitable[None]]


@dataclass(frozen=True)
class ConsumerConfig:
    bootstrap_servers: str
    topic: str
    group_id: str
    dlq_topic: str
    max_batch: int = 500
    poll_timeout_ms: int = 200
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    # How often the metadata is refreshed even without errors: partitions added to the topic
    # are picked up (the group rebalances) within this time; aiokafka's default is 5 minutes.
    metadata_max_age_ms: int = 30_000
    # Fault injection for tests: after this many successful handler calls, os._exit(137)
    # AFTER the effect and BEFORE the offset commit.
    crash_after_effect_batches: int | None = None


class ConsumerMetrics:
    """Prometheus metrics of the batch consumer, labelled by consumer `group`.

    One instance per registry: constructing it again for the same registry returns the same
    object (a second registration of the same names would be refused by prometheus-client).
    """

    # Keyed by id(); the registry is kept alive in the value so that id can never be reused.
    _by_registry: ClassVar[dict[int, tuple[CollectorRegistry, ConsumerMetrics]]] = {}

    events_processed: Counter
    events_failed: Counter
    events_dead_lettered: Counter
    batch_size: Histogram
    batch_duration_seconds: Histogram

    def __new__(cls, registry: CollectorRegistry = REGISTRY) -> ConsumerMetrics:
        existing = cls._by_registry.get(id(registry))
        if existing is not None:
            return existing[1]
        self = super().__new__(cls)
        self.events_processed = Counter(
            "blog_consumer_events_processed",
            "Events whose batch was handled successfully (effect durable).",
            ["group"],
            registry=registry,
        )
        self.events_failed = Counter(
            "blog_consumer_events_failed",
            "Events in handler calls that raised (counted once per failed attempt).",
            ["group"],
            registry=registry,
        )
        self.events_dead_lettered = Counter(
            "blog_consumer_events_dead_lettered",
            "Undecodable records sent to the dead-letter topic.",
            ["group"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "blog_consumer_batch_size",
            "Records per polled batch.",
            ["group"],
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=registry,
        )
        self.batch_duration_seconds = Histogram(
            "blog_consumer_batch_duration_seconds",
            "Time from a batch's poll to its offset commit, retries included.",
            ["group"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        cls._by_registry[id(registry)] = (registry, self)
        return self

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        # Everything happens in __new__ (see the class doc).
        pass


def truncate_utf8(text: str, max_bytes: int) -> bytes:
    """`text` as UTF-8, cut to at most `max_bytes` without splitting a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return encoded
    return encoded[:max_bytes].decode("utf-8", errors="ignore").encode("utf-8")


def dlq_headers(
    *,
    reason: str,
    group: str,
    topic: str,
    partition: int,
    offset: int,
    failed_at: datetime,
    original: Sequence[tuple[str, bytes]] = (),
) -> list[tuple[str, bytes]]:
    """The headers of a dead-lettered record: its own headers (minus stale `dlq-*` ones from an
    earlier dead-lettering) followed by why and where from."""
    kept = [(key, value) for key, value in original if not key.startswith(DLQ_HEADER_PREFIX)]
    return [
        *kept,
        ("dlq-reason", truncate_utf8(reason or "unknown", DLQ_REASON_MAX_BYTES)),
        ("dlq-group", group.encode()),
        ("dlq-source-topic", topic.encode()),
        ("dlq-source-partition", str(partition).encode()),
        ("dlq-source-offset", str(offset).encode()),
        ("dlq-failed-at", failed_at.astimezone(UTC).isoformat().encode()),
    ]


@dataclass
class _PolledBatch:
    """A polled batch, decoded, with the rebalance generation it was polled in."""

    generation: int
    polled_at: float
    records: list[ConsumerRecord[Any, Any]]
    events: list[ConsumedEvent]
    undecodable: list[tuple[ConsumerRecord[Any, Any], str]]


def decode_records(
    records: Sequence[ConsumerRecord[Any, Any]],
) -> tuple[list[ConsumedEvent], list[tuple[ConsumerRecord[Any, Any], str]]]:
    """The decodable records as events, and the others with the reason they failed."""
    events: list[ConsumedEvent] = []
    undecodable: list[tuple[ConsumerRecord[Any, Any], str]] = []
    for record in records:
        try:
            envelope = decode_event(record.value)
        except EventDecodeError as exc:
            undecodable.append((record, str(exc)))
        else:
            events.append(
                ConsumedEvent(
                    envelope=envelope,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    timestamp_ms=record.timestamp,
                )
            )
    return events, undecodable


def commit_offsets(
    records: Sequence[ConsumerRecord[Any, Any]],
) -> dict[TopicPartition, OffsetAndMetadata]:
    """`last offset + 1` for every partition that appears in `records`."""
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        current = offsets.get(tp)
        if current is None or record.offset + 1 > current.offset:
            offsets[tp] = OffsetAndMetadata(record.offset + 1, "")
    return offsets


class _BatchLockListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Makes a rebalance wait for the batch in hand (processed and committed) before the
    partitions go to another member."""

    def __init__(self, owner: BatchConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._on_revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info(
            "group %s assigned %s",
            self._owner.config.group_id,
            sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned),
        )


class BatchConsumer:
    def __init__(
        self,
        config: ConsumerConfig,
        handler: BatchHandler,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.config = config
        self._handler = handler
        self._metrics = metrics if metrics is not None else ConsumerMetrics()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._closing = False
        self._running = False
        # Held around process + commit of one batch; the rebalance listener takes it too.
        self._batch_lock = asyncio.Lock()
        self._revoke_pending = False
        # Bumped at every revoke: a batch read ahead in an older generation is stale.
        self._generation = 0
        self._handler_failing = False
        self._effect_batches = 0

    @property
    def healthy(self) -> bool:
        """False while the handler is failing, before start(), after stop() or a crash."""
        return (
            self._consumer is not None and not self._stopped.is_set() and not self._handler_failing
        )

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member owns right now (empty before the first join)."""
        if self._consumer is None or self._stopped.is_set():
            return frozenset()
        return frozenset(self._consumer.assignment())

    async def start(self) -> None:
        """Connect the DLQ producer and the consumer, and subscribe (joins on first poll)."""
        if self._consumer is not None:
            return
        client_id = f"{self.config.group_id}-{os.getpid()}"
        producer = AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap_servers,
            client_id=f"{client_id}-dlq",
            acks="all",
            enable_idempotence=True,
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.config.bootstrap_servers,
            group_id=self.config.group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=self.config.metadata_max_age_ms,
        )
        await producer.start()
        try:
            await consumer.start()
            consumer.subscribe([self.config.topic], listener=_BatchLockListener(self))
        except BaseException:
            await producer.stop()
            with _suppress_kafka_errors("consumer stop after a failed start"):
                await consumer.stop()
            raise
        self._producer = producer
        self._consumer = consumer
        log.info("consumer group %s subscribed to %s", self.config.group_id, self.config.topic)

    async def run(self) -> None:
        """Poll, process and commit until stop(); starts the clients if start() was not called."""
        await self.start()
        assert self._consumer is not None
        self._running = True
        ahead: asyncio.Task[_PolledBatch | None] | None = None
        try:
            while not self._stopping.is_set():
                polled = await (ahead if ahead is not None else self._poll())
                ahead = None
                if polled is None:
                    continue
                if polled.generation != self._generation or self._stopping.is_set():
                    continue  # stale or stopping: redelivered from the last commit
                # Read the next batch while this one is handled (at most one ahead).
                ahead = asyncio.create_task(self._poll(), name=f"{self.config.group_id}-poll")
                async with self._batch_lock:
                    await self._process_batch(polled)
        finally:
            self._running = False
            if ahead is not None:
                # Its records are not handled: they are delivered again from the last commit.
                ahead.cancel()
                try:
                    await ahead
                except asyncio.CancelledError:
                    pass
                except Exception as exc:
                    log.warning("group %s: poll ahead failed: %r", self.config.group_id, exc)
            await self._close()

    async def _poll(self) -> _PolledBatch | None:
        assert self._consumer is not None
        batches = await self._consumer.getmany(
            timeout_ms=self.config.poll_timeout_ms, max_records=self.config.max_batch
        )
        generation = self._generation
        records = [record for partition in batches.values() for record in partition]
        if not records:
            return None
        events: list[ConsumedEvent] = []
        undecodable: list[tuple[ConsumerRecord[Any, Any], str]] = []
        # Decoded in slices with a yield between them: the handler of the batch in hand then
        # resumes as soon as its database answers, instead of waiting for the whole decode.
        for start in range(0, len(records), DECODE_SLICE):
            if start:
                await asyncio.sleep(0)
            sliced_events, sliced_undecodable = decode_records(
                records[start : start + DECODE_SLICE]
            )
            events += sliced_events
            undecodable += sliced_undecodable
        return _PolledBatch(generation, time.monotonic(), records, events, undecodable)

    async def stop(self) -> None:
        """Finish and commit the batch in hand, then leave the group and close the clients."""
        self._stopping.set()
        if self._running:
            await self._stopped.wait()
        else:
            await self._close()

    # -- internals ------------------------------------------------------------------------

    async def _close(self) -> None:
        if self._closing:
            await self._stopped.wait()
            return
        self._closing = True
        try:
            if self._consumer is not None:
                with _suppress_kafka_errors("consumer stop"):
                    await self._consumer.stop()  # leaves the group: partitions move at once
            if self._producer is not None:
                with _suppress_kafka_errors("DLQ producer stop"):
                    await self._producer.stop()
            log.info("consumer group %s stopped", self.config.group_id)
        finally:
            # Only now is stop() done: the group was left and the clients are closed.
            self._stopped.set()

    async def _on_revoke(self, revoked: set[TopicPartition]) -> None:
        # Tell a retrying batch to give up (its effect is not durable, so it is not committed
        # and the next owner gets it again), then wait until the batch in hand is done.
        self._revoke_pending = True
        self._generation += 1
        try:
            async with self._batch_lock:
                log.info(
                    "group %s revoked %s",
                    self.config.group_id,
                    sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked),
                )
        finally:
            self._revoke_pending = False

    async def _process_batch(self, polled: _PolledBatch) -> None:
        assert self._consumer is not None
        group = self.config.group_id
        started = polled.polled_at
        # A rebalance may have happened between the poll and taking the lock: records of
        # partitions we no longer own belong to the new owner, which reads them from the
        # last commit.
        owned = self._consumer.assignment()
        if polled.generation != self._generation:
            return

        def is_owned(record: ConsumerRecord[Any, Any]) -> bool:
            return TopicPartition(record.topic, record.partition) in owned

        records = [r for r in polled.records if is_owned(r)]
        if not records:
            return
        self._metrics.batch_size.labels(group=group).observe(len(records))
        if len(records) == len(polled.records):
            events, undecodable = polled.events, list(polled.undecodable)
        else:
            events = [e for e in polled.events if TopicPartition(e.topic, e.partition) in owned]
            undecodable = [(r, why) for r, why in polled.undecodable if is_owned(r)]

        attempt = 0
        while True:
            try:
                # DLQ first, each record once: a retry only redoes what is still pending.
                while undecodable:
                    await self._dead_letter(*undecodable[0])
                    undecodable.pop(0)
                if events:
                    await self._handler(events)
                break
            except Exception as exc:
                attempt += 1
                self._handler_failing = True
                self._metrics.events_failed.labels(group=group).inc(len(events))
                delay = backoff_delay(attempt, self.config.retry_initial_s, self.config.retry_max_s)
                # The traceback once per failing streak; later attempts one line each, so a
                # minute-long outage does not flood the log.
                log.log(
                    logging.ERROR if attempt == 1 else logging.WARNING,
                    "group %s: batch of %d events failed (attempt %d: %s), retrying in %.2fs",
                    group,
                    len(events),
                    attempt,
                    f"{type(exc).__name__}: {exc}"[:300],
                    delay,
                    exc_info=attempt == 1,
                )
                if await self._interrupted(delay):
                    log.warning(
                        "group %s: abandoning a failing batch uncommitted (%s); it will be "
                        "delivered again",
                        group,
                        "stopping" if self._stopping.is_set() else "partitions revoked",
                    )
                    return
        self._handler_failing = False

        if events:
            self._metrics.events_processed.labels(group=group).inc(len(events))
            self._effect_batches += 1
            limit = self.config.crash_after_effect_batches
            if limit is not None and self._effect_batches >= limit:
                log.critical("fault injection: exiting after effect, before commit")
                logging.shutdown()
                os._exit(CRASH_EXIT_CODE)

        try:
            await self._consumer.commit(commit_offsets(records))
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # The group moved on (rebalance): the new owner re-reads from the last commit and
            # the idempotent handler turns the redelivery into a no-op.
            log.warning("group %s: commit failed, batch will be redelivered: %s", group, exc)
        self._metrics.batch_duration_seconds.labels(group=group).observe(time.monotonic() - started)

    async def _dead_letter(self, record: ConsumerRecord[Any, Any], reason: str) -> None:
        assert self._producer is not None
        headers = dlq_headers(
            reason=reason,
            group=self.config.group_id,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            failed_at=datetime.now(UTC),
            original=list(record.headers or ()),
        )
        await self._producer.send_and_wait(
            self.config.dlq_topic, key=record.key, value=record.value, headers=headers
        )
        self._metrics.events_dead_lettered.labels(group=self.config.group_id).inc()
        log.warning(
            "group %s: %s[%d]@%d dead-lettered to %s: %s",
            self.config.group_id,
            record.topic,
            record.partition,
            record.offset,
            self.config.dlq_topic,
            reason[:200],
        )

    async def _interrupted(self, delay: float) -> bool:
        """Sleep `delay` unless stop() or a revoke comes first; True when interrupted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while not (self._stopping.is_set() or self._revoke_pending):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            # Short slices so a revoke (a flag, not an event) is noticed quickly.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), min(remaining, 0.1))
        return True


@contextlib.contextmanager
def _suppress_kafka_errors(what: str) -> Iterator[None]:
    """Log and swallow Kafka errors during shutdown (the broker may already be gone)."""
    try:
        yield
    except (KafkaError, OSError) as exc:
        log.warning("%s failed: %s", what, exc)

"""The consumer loop: poll a batch (reading one ahead), settle it (`isolation`: undecodable records
and poison dead-lettered, the rest applied by the service's handler), commit once every record is
applied or its dead letter is durable.

The batch in hand is processed and committed under a lock that the rebalance listener also
takes, so a revoked partition is never committed by two owners nor skipped. `stop()` lets the
batch in hand finish and commit (it only cuts a retry backoff short), then leaves the group.

While the handler of batch N runs (waiting on its database), the next batch is polled and decoded
(at most one batch ahead), and batch N-1's offsets are being committed, so the loop does not idle
on I/O; handler calls stay strictly sequential, and so do commits (each starts once the one before
it is answered, and only after its own batch's effect is durable). A batch read ahead is dropped
(not handled, not committed) if a rebalance happened since its poll or the consumer is stopping:
its records are delivered again from the last commit. A revoke and `stop()` wait for the commit in
flight, so the next owner starts from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any, Generic

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from service_kit import tracing
from service_kit.consumer.config import ConsumerConfig
from service_kit.consumer.dead_letter import DeadLetterWriter
from service_kit.consumer.failures import IsTransient, is_transient_by_default
from service_kit.consumer.isolation import BatchSettler, DeadLetter, Describe, Position
from service_kit.consumer.metrics import ConsumerMetrics
from service_kit.consumer.offsets import commit_offsets, settled_prefix_offsets
from service_kit.consumer.rebalance import BatchLockListener, describe_partitions
from service_kit.consumer.records import (
    BatchHandler,
    ConsumedEvent,
    Decoder,
    E,
    PolledBatch,
    Record,
    decode_in_slices,
)
from service_kit.kafka_clients import client_options
from service_kit.logs import bind_log_fields

log = logging.getLogger(__name__)


class BatchConsumer(Generic[E]):
    def __init__(
        self,
        config: ConsumerConfig,
        handler: BatchHandler[E],
        metrics: ConsumerMetrics | None = None,
        *,
        decoder: Decoder[E],
        is_transient: IsTransient = is_transient_by_default,
    ) -> None:
        """`decoder` turns record values into events (what it rejects is dead-lettered);
        `is_transient` tells a dependency outage (retried without limit) from a record-level
        failure (isolated, then dead-lettered): see `service_kit.consumer.failures`."""
        self.config = config
        self._decoder = decoder
        self._metrics = metrics if metrics is not None else ConsumerMetrics()
        self._settler = BatchSettler(
            config.group_id,
            handler,
            is_transient,
            config.retry_policy(),
            self._metrics,
            self._interrupted,
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._dead_letters: DeadLetterWriter | None = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._closing = False
        self._loop_started = False
        # Held around process + commit of one batch; the rebalance listener takes it too.
        self._batch_lock = asyncio.Lock()
        self._revoke_pending = False
        # Bumped at every revoke: a batch read ahead in an older generation is stale.
        self._generation = 0
        # The last batch's commit, answered while the next batch is handled (one at a time).
        self._commit_in_flight: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """False while the handler is failing, before start(), after stop() or a crash."""
        return (
            self._consumer is not None and not self._stopped.is_set() and not self._settler.failing
        )

    @property
    def loop_started(self) -> bool:
        """run() reached the poll loop (it may be finishing it): stop() lets it finish the batch
        in hand and close the clients itself."""
        return self._loop_started

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
        config = self.config
        dead_letters = DeadLetterWriter(
            config.bootstrap_servers,
            config.group_id,
            config.dlq_topic,
            metadata_max_age_ms=config.metadata_max_age_ms,
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=config.bootstrap_servers,
            group_id=config.group_id,
            client_id=f"{config.group_id}-{os.getpid()}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=config.metadata_max_age_ms,
            **client_options(),
        )
        await dead_letters.start()
        try:
            await consumer.start()
            consumer.subscribe(
                config.topics, listener=BatchLockListener(config.group_id, self._on_revoke)
            )
        except BaseException:
            await dead_letters.stop()
            with _suppress_kafka_errors("consumer stop after a failed start"):
                await consumer.stop()
            raise
        self._dead_letters = dead_letters
        self._consumer = consumer
        log.info("consumer group %s subscribed to %s", config.group_id, ", ".join(config.topics))

    async def run(self) -> None:
        """Poll, process and commit until stop(); starts the clients if start() was not called."""
        await self.start()
        assert self._consumer is not None
        bind_log_fields(group=self.config.group_id)  # every line this task logs names its group
        self._loop_started = True
        ahead: asyncio.Task[PolledBatch[E] | None] | None = None
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
            try:
                if ahead is not None:
                    # Its records are not handled: they are delivered again from the last commit.
                    ahead.cancel()
                    try:
                        await ahead
                    except asyncio.CancelledError:
                        pass
                    except Exception as exc:
                        log.warning("group %s: poll ahead failed: %r", self.config.group_id, exc)
                await self._commit_answered()
            finally:
                # Also when this task is cancelled meanwhile: stop() waits for `_stopped`.
                await self._close()

    async def stop(self) -> None:
        """Finish and commit the batch in hand, then leave the group and close the clients."""
        self._stopping.set()
        if self._loop_started:
            await self._stopped.wait()  # the loop closes the clients itself, once it is out
        else:
            await self._close()

    # -- internals ------------------------------------------------------------------------

    async def _poll(self) -> PolledBatch[E] | None:
        assert self._consumer is not None
        batches = await self._consumer.getmany(
            timeout_ms=self.config.poll_timeout_ms, max_records=self.config.max_batch
        )
        generation = self._generation
        records = [record for partition in batches.values() for record in partition]
        if not records:
            return None
        events, undecodable = await decode_in_slices(records, self._decoder)
        return PolledBatch(
            generation, time.monotonic(), frozenset(batches), records, events, undecodable
        )

    async def _close(self) -> None:
        if self._closing:
            await self._stopped.wait()
            return
        self._closing = True
        try:
            try:
                if self._consumer is not None:
                    with _suppress_kafka_errors("consumer stop"):
                        await self._consumer.stop()  # leaves the group: partitions move at once
            finally:
                # Even when this task is cancelled meanwhile: no producer left open.
                if self._dead_letters is not None:
                    with _suppress_kafka_errors("DLQ producer stop"):
                        await self._dead_letters.stop()
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
                await self._commit_answered()  # the next owner starts from this commit
                log.info("group %s revoked %s", self.config.group_id, describe_partitions(revoked))
        finally:
            self._revoke_pending = False

    async def _process_batch(self, polled: PolledBatch[E]) -> None:
        assert self._consumer is not None
        group = self.config.group_id
        started = polled.polled_at
        # A rebalance may have happened between the poll and taking the lock: records of
        # partitions we no longer own belong to the new owner, which reads them from the
        # last commit.
        owned = self._consumer.assignment()
        if polled.generation != self._generation:
            return

        def is_owned(record: Record) -> bool:
            return TopicPartition(record.topic, record.partition) in owned

        # Usually every partition read is still owned: then no record is looked at.
        if polled.partitions <= owned:
            records = polled.records
        else:
            records = [r for r in polled.records if is_owned(r)]
        if not records:
            return
        self._metrics.batch_size.labels(group=group).observe(len(records))
        if len(records) == len(polled.records):
            events, undecodable = polled.events, list(polled.undecodable)
        else:
            events = [e for e in polled.events if TopicPartition(e.topic, e.partition) in owned]
            undecodable = [(r, why) for r, why in polled.undecodable if is_owned(r)]

        by_position: dict[Position, Record] = {}

        def record_at(position: Position) -> Record:
            # Built on the first call only: the per-record paths (isolation, DLQ) are rare.
            if not by_position:
                by_position.update(((r.topic, r.partition, r.offset), r) for r in records)
            return by_position[position]

        async def dead_letter(position: Position, reason: str) -> None:
            assert self._dead_letters is not None
            await self._dead_letters.write(record_at(position), reason)

        def describe(position: Position) -> Mapping[str, Any]:
            """The log fields of one record (the per-record paths only: isolation, DLQ)."""
            record = record_at(position)
            fields: dict[str, Any] = {
                "partition": record.partition,
                "offset": record.offset,
                "trace_id": tracing.trace_id_of(tracing.header_traceparent(record.headers)),
            }
            if self._decoder.log_fields is not None:
                for event in events:
                    if (event.topic, event.partition, event.offset) == position:
                        fields.update(self._decoder.log_fields(event.envelope))
                        break
            return fields

        with tracing.consumer_batch_span(self.config.topic, group, records):
            await self._settle_and_commit(
                records, events, undecodable, dead_letter, describe, started
            )

    async def _settle_and_commit(
        self,
        records: list[Record],
        events: list[ConsumedEvent[E]],
        undecodable: list[tuple[Record, str]],
        dead_letter: DeadLetter,
        describe: Describe,
        started: float,
    ) -> None:
        assert self._consumer is not None
        group = self.config.group_id
        settlement = await self._settler.settle(events, undecodable, dead_letter, describe)
        self._metrics.events_processed.labels(group=group).inc(settlement.applied)
        if settlement.completed:
            offsets = commit_offsets(records)
        else:
            # What is settled is not redone by the next owner: no second dead letter.
            settled = settlement.settled  # built on each read: once here
            offsets = settled_prefix_offsets(records, settled)
            log.warning(
                "group %s: abandoning a failing batch (%s); %d of %d records settled, the rest "
                "will be delivered again",
                group,
                "stopping" if self._stopping.is_set() else "partitions revoked",
                len(settled),
                len(records),
            )
            if not offsets:
                return
        # Commits stay in order: this one is sent once the previous one is answered. It is then
        # answered while the next batch is handled; a revoke or stop() waits for it.
        await self._commit_answered()
        self._commit_in_flight = asyncio.create_task(
            self._commit(offsets, started if settlement.completed else None),
            name=f"{group}-commit",
        )

    async def _commit(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], started: float | None
    ) -> None:
        assert self._consumer is not None
        group = self.config.group_id
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # The group moved on (rebalance): the new owner re-reads from the last commit and
            # the idempotent handler turns the redelivery into a no-op.
            log.warning("group %s: commit failed, batch will be redelivered: %s", group, exc)
            return
        if started is not None:
            self._metrics.batch_duration_seconds.labels(group=group).observe(
                time.monotonic() - started
            )

    async def _commit_answered(self) -> None:
        """Wait until the commit in flight (if any) is answered; it never raises."""
        task, self._commit_in_flight = self._commit_in_flight, None
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                # Our waiter was cancelled, not the commit: keep it for whoever waits next.
                self._commit_in_flight = task
            raise
        except Exception as exc:  # _commit logs Kafka's errors; anything else is logged here
            log.warning("group %s: commit failed: %r", self.config.group_id, exc)

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
    """Log and swallow Kafka errors during shutdown (the broker may already be gone).

    Also a CancelledError that is not a cancellation of this task: aiokafka's close() awaits its
    own background tasks, and when one of them was cancelled that reaches the caller
    (aio-libs/aiokafka#647); the rest of the shutdown (the dead-letter producer, `_stopped`)
    must still run. A cancellation of this task itself goes on."""
    try:
        yield
    except (KafkaError, OSError) as exc:
        log.warning("%s failed: %s", what, exc)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        log.warning("%s: one of aiokafka's own tasks was cancelled; closing goes on", what)

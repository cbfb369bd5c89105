"""Settling a batch: every record ends up applied (the handler's effect is durable) or
dead-lettered, so the batch can be committed, however its handler fails.

- A transient failure (see `failures`) retries the same records with bounded exponential
  backoff and full jitter, without limit: the dependency comes back, nothing is skipped.
- A record-level failure isolates the culprit(s): the failing part is split (by partition first,
  then in halves, each half in offset order) and each part handled on its own, so the records
  around the poison are applied; when the handler names the events it rejected
  (`RejectedEvents`), only those are retried. An isolated record is tried `record_attempts`
  times in all, then dead-lettered with the exception as its reason.
- After `dead_letter_streak_limit` records in a row were dead-lettered by handler failures, the
  next one is retried like a transient failure instead: so many poisons in a row means the
  environment is broken (a schema or permission change), not the records.

Nothing here commits: the loop commits once `settle` returns (or, when a stop or a revoke
interrupted it, the prefix of each partition that is settled).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic

from service_kit.backoff import backoff_delay
from service_kit.consumer.failures import IsTransient, RejectedEvents, failure_reason
from service_kit.consumer.metrics import ConsumerMetrics
from service_kit.consumer.records import BatchHandler, ConsumedEvent, E, Record
from service_kit.logs import log_context

log = logging.getLogger(__name__)

Position = tuple[str, int, int]  # topic, partition, offset
# Writes the record at a position to the dead-letter topic; returns once the copy is durable.
DeadLetter = Callable[[Position, str], Awaitable[None]]
# The log fields of the record at a position (partition, offset, event_id, blog_id, trace_id).
Describe = Callable[[Position], Mapping[str, Any]]
# Waits the given seconds; True when a stop or revoke cut the wait short.
Pause = Callable[[float], Awaitable[bool]]


@dataclass(frozen=True)
class RetryPolicy:
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    record_attempts: int = 3
    dead_letter_streak_limit: int = 100


@dataclass
class Settlement(Generic[E]):
    """What became of a batch."""

    completed: bool = True  # False: a stop or revoke came first; `settled` says how far it got
    dead_lettered: list[tuple[Position, str]] = field(default_factory=list)
    applied: int = 0  # events whose effect the handler made durable
    isolation_s: float | None = None  # how long isolating held the batch back (None: no poison)
    # The applied events as the handler got them: their positions are only read when a batch
    # is abandoned (`settled`), so none is built per event on the way.
    applied_segments: list[Sequence[ConsumedEvent[E]]] = field(default_factory=list)

    @property
    def settled(self) -> set[Position]:
        """The positions applied or dead-lettered."""
        positions = {position_of(e) for segment in self.applied_segments for e in segment}
        positions.update(position for position, _ in self.dead_lettered)
        return positions


class Interrupted(Exception):
    """A stop or revoke cut a retry short."""


def position_of(event: ConsumedEvent[Any]) -> Position:
    return (event.topic, event.partition, event.offset)


def split(segment: Sequence[ConsumedEvent[E]]) -> list[list[ConsumedEvent[E]]]:
    """Narrow a failing segment: one part per partition when it spans several (a poison holds
    back only its own partition), else two halves in offset order."""
    by_partition: dict[tuple[str, int], list[ConsumedEvent[E]]] = {}
    for event in segment:
        by_partition.setdefault((event.topic, event.partition), []).append(event)
    if len(by_partition) > 1:
        return list(by_partition.values())
    middle = len(segment) // 2
    return [list(segment[:middle]), list(segment[middle:])]


class BatchSettler(Generic[E]):
    """Runs the handler over a batch until every record is applied or dead-lettered."""

    def __init__(
        self,
        group: str,
        handler: BatchHandler[E],
        is_transient: IsTransient,
        policy: RetryPolicy,
        metrics: ConsumerMetrics,
        pause: Pause,
    ) -> None:
        self._group = group
        self._handler = handler
        self._is_transient = is_transient
        self._policy = policy
        self._metrics = metrics
        self._pause = pause
        self._dead_letter_streak = 0
        self.failing = False  # a failing streak is going on (transient, or too many poisons)
        self._describe: Describe | None = None

    def _about(self, position: Position) -> contextlib.AbstractContextManager[None]:
        """Log lines inside name the record (JSON logs: partition, offset, event_id, ...)."""
        if self._describe is None:
            return contextlib.nullcontext()
        return log_context(**self._describe(position))

    async def settle(
        self,
        events: Sequence[ConsumedEvent[E]],
        undecodable: Sequence[tuple[Record, str]],
        dead_letter: DeadLetter,
        describe: Describe | None = None,
    ) -> Settlement[E]:
        settlement: Settlement[E] = Settlement()
        self._describe = describe
        try:
            for record, reason in undecodable:
                position = (record.topic, record.partition, record.offset)
                with self._about(position):
                    await self._dead_letter(position, reason, dead_letter, settlement)
            await self._handle(list(events), dead_letter, settlement)
        except Interrupted:
            settlement.completed = False
        return settlement

    async def _handle(
        self,
        events: list[ConsumedEvent[E]],
        dead_letter: DeadLetter,
        settlement: Settlement[E],
    ) -> None:
        segments: deque[list[ConsumedEvent[E]]] = deque([events] if events else [])
        isolating_since: float | None = None
        outcome = "done"
        try:
            while segments:
                segment = segments.popleft()
                failure = await self._run(segment)
                if failure is None:
                    self._applied(segment, settlement)
                    continue
                if isolating_since is None:
                    isolating_since = time.monotonic()
                    self._metrics.isolations.labels(group=self._group).inc()
                    log.warning(
                        "group %s: %d events failed for a record-level reason (%s); isolating "
                        "the failing record(s)",
                        self._group,
                        len(segment),
                        _describe(failure),
                    )
                if len(segment) == 1:
                    with self._about(position_of(segment[0])):
                        await self._retry_alone(segment[0], failure, dead_letter, settlement)
                else:
                    segments.extendleft(reversed(self._narrow(segment, failure, settlement)))
        except Interrupted:
            outcome = "interrupted"
            raise
        finally:
            if isolating_since is not None:
                settlement.isolation_s = time.monotonic() - isolating_since
                self._metrics.isolation_seconds.labels(group=self._group).observe(
                    settlement.isolation_s
                )
                log.warning(
                    "group %s: isolation %s after %.2fs: %d dead-lettered, %d applied",
                    self._group,
                    outcome,
                    settlement.isolation_s,
                    len(settlement.dead_lettered),
                    settlement.applied,
                )

    def _narrow(
        self,
        segment: list[ConsumedEvent[E]],
        failure: Exception,
        settlement: Settlement[E],
    ) -> list[list[ConsumedEvent[E]]]:
        if isinstance(failure, RejectedEvents):
            rejected = {position_of(event) for event, _ in failure.rejected}
            in_segment = [e for e in segment if position_of(e) in rejected]
            if in_segment and len(in_segment) == len(rejected):
                # The handler vouches for the others: their effect is durable.
                self._applied([e for e in segment if position_of(e) not in rejected], settlement)
                return [[event] for event in in_segment]
        return split(segment)

    async def _run(self, segment: list[ConsumedEvent[E]]) -> Exception | None:
        """Handle the segment, retrying transient failures without limit; the record-level
        failure if there is one."""
        attempt = 0
        while True:
            try:
                await self._handler(segment)
            except Exception as exc:
                self._metrics.events_failed.labels(group=self._group).inc(len(segment))
                if not self._is_transient(exc):
                    return exc
                attempt += 1
                await self._back_off_transient(len(segment), attempt, exc)
            else:
                self.failing = False
                return None

    async def _back_off_transient(self, events: int, attempt: int, exc: Exception) -> None:
        self.failing = True
        delay = backoff_delay(attempt, self._policy.retry_initial_s, self._policy.retry_max_s)
        # The traceback once per failing streak; later attempts one line each, so a
        # minute-long outage does not flood the log.
        log.log(
            logging.ERROR if attempt == 1 else logging.WARNING,
            "group %s: batch of %d events failed (attempt %d: %s), retrying in %.2fs",
            self._group,
            events,
            attempt,
            _describe(exc),
            delay,
            exc_info=attempt == 1,
        )
        if await self._pause(delay):
            raise Interrupted

    async def _retry_alone(
        self,
        event: ConsumedEvent[E],
        failure: Exception,
        dead_letter: DeadLetter,
        settlement: Settlement[E],
    ) -> None:
        policy = self._policy
        attempt = 1
        while attempt < policy.record_attempts:
            delay = backoff_delay(attempt, policy.retry_initial_s, policy.retry_max_s)
            log.info(
                "group %s: %s failed alone (attempt %d of %d: %s); again in %.2fs",
                self._group,
                event.position,
                attempt,
                policy.record_attempts,
                _describe(failure),
                delay,
            )
            if await self._pause(delay):
                raise Interrupted
            retried = await self._run([event])
            if retried is None:
                self._applied([event], settlement)
                return
            failure = retried
            attempt += 1
        held = 0
        while self._dead_letter_streak >= policy.dead_letter_streak_limit:
            # Too many poisons in a row: the environment, not the records. Wait for a fix.
            held += 1
            if held == 1:
                log.error(
                    "group %s: %d records in a row dead-lettered by handler failures; "
                    "treating %s as a systemic failure and retrying it until it succeeds",
                    self._group,
                    self._dead_letter_streak,
                    event.position,
                )
            await self._back_off_transient(1, held, failure)
            retried = await self._run([event])
            if retried is None:
                self._applied([event], settlement)
                return
            failure = retried
        self._dead_letter_streak += 1
        await self._dead_letter(
            position_of(event), failure_reason(failure, event), dead_letter, settlement
        )

    async def _dead_letter(
        self,
        position: Position,
        reason: str,
        dead_letter: DeadLetter,
        settlement: Settlement[E],
    ) -> None:
        """Write the dead letter, retrying (without limit) until Kafka has it durably."""
        attempt = 0
        while True:
            try:
                await dead_letter(position, reason)
                break
            except Exception as exc:
                attempt += 1
                self.failing = True
                delay = backoff_delay(
                    attempt, self._policy.retry_initial_s, self._policy.retry_max_s
                )
                log.warning(
                    "group %s: dead-lettering %s[%d]@%d failed (%s); retrying in %.2fs",
                    self._group,
                    *position,
                    _describe(exc),
                    delay,
                )
                if await self._pause(delay):
                    raise Interrupted from None
        self.failing = False
        settlement.dead_lettered.append((position, reason))
        self._metrics.events_dead_lettered.labels(group=self._group).inc()

    def _applied(self, events: Sequence[ConsumedEvent[E]], settlement: Settlement[E]) -> None:
        if not events:
            return
        settlement.applied_segments.append(events)
        settlement.applied += len(events)
        self._dead_letter_streak = 0


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]

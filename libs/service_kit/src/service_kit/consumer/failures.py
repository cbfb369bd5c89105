"""Failure classification: is a handler failure *transient* (the database, Elasticsearch or
Kafka is unreachable, slow or overloaded: retry the same batch with backoff, without limit) or
*record-level* (something about the records themselves: isolate them, retry them a bounded
number of times, then dead-letter them)?

The kit knows the network and Kafka errors; each service adds its own clients' errors
(`transient_errors(asyncpg.PostgresConnectionError, ...)`). When in doubt a service should call
an error transient: a transient misjudgement stops the group until someone looks (nothing is
lost), a record-level misjudgement sends good records to the dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from service_kit.consumer.records import ConsumedEvent

IsTransient = Callable[[BaseException], bool]

# Transient whatever the service: the network and timeouts.
DEFAULT_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,  # refused/reset connections, unreachable hosts
    TimeoutError,  # asyncio and socket timeouts
    KafkaConnectionError,
    KafkaTimeoutError,
)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and the ones it was raised from (`raise ... from`), outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__
    return seen


def is_transient_by_default(exc: BaseException) -> bool:
    """Network errors, timeouts, and Kafka errors Kafka itself calls retriable."""
    return any(
        isinstance(cause, DEFAULT_TRANSIENT)
        or (isinstance(cause, KafkaError) and bool(cause.retriable))
        for cause in _chain(exc)
    )


def transient_errors(
    *types: type[BaseException], when: Callable[[BaseException], bool] | None = None
) -> IsTransient:
    """The kit's defaults plus exceptions of `types` and those `when` accepts (e.g. an HTTP
    error whose status is 429 or 5xx), anywhere in the `raise ... from` chain."""

    def is_transient(exc: BaseException) -> bool:
        if is_transient_by_default(exc):
            return True
        return any(
            isinstance(cause, types) or (when is not None and when(cause)) for cause in _chain(exc)
        )

    return is_transient


class RejectedEvents(Exception):
    """Raised by a handler whose unit of work went through except for some events that failed
    for a reason of their own (e.g. Elasticsearch refused their documents): the effect of every
    other event of the call is durable. The consumer retries each rejected event alone and
    dead-letters it, with its reason, if it keeps failing."""

    def __init__(self, rejected: Sequence[tuple[ConsumedEvent[Any], str]]) -> None:
        if not rejected:
            raise ValueError("RejectedEvents needs at least one event")
        self.rejected = list(rejected)
        first_event, first_reason = self.rejected[0]
        super().__init__(
            f"{len(self.rejected)} event(s) rejected; first {first_event.position}: {first_reason}"
        )

    def reason_for(self, event: ConsumedEvent[Any]) -> str | None:
        for rejected, reason in self.rejected:
            if rejected.position == event.position:
                return reason
        return None


def failure_reason(exc: BaseException, event: ConsumedEvent[Any] | None = None) -> str:
    """What a dead letter's `dlq-reason` says about a handler failure."""
    if isinstance(exc, RejectedEvents) and event is not None:
        reason = exc.reason_for(event)
        if reason is not None:
            return reason
    return f"{type(exc).__name__}: {exc}"

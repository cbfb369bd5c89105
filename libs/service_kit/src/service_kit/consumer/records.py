"""What the consumer hands to a service: decoded records (`ConsumedEvent`), the handler type, and
the injected `Decoder` that turns a record value into the service's event type. The kit knows no
event contract: each service passes its own decoder."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

from aiokafka.structs import ConsumerRecord, TopicPartition

E = TypeVar("E")

# Records decoded between two yields to the event loop while reading ahead (~0.5 ms of CPU).
DECODE_SLICE = 50


# Not frozen (treat it as read-only): one is built per record, and a frozen dataclass's
# __init__ (object.__setattr__ per field) cost ~1 us more each.
@dataclass(slots=True)
class ConsumedEvent(Generic[E]):
    """One decoded record: the event (`envelope`) and where it was read from."""

    envelope: E
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None = None

    @property
    def position(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


BatchHandler = Callable[[Sequence[ConsumedEvent[E]]], Awaitable[None]]


@dataclass(frozen=True)
class Decoder(Generic[E]):
    """How a record value becomes an event: `decode(value)` returns it, or raises one of
    `rejects`, whose message becomes the dead letter's `dlq-reason`. Any other exception from
    `decode` is a bug and propagates."""

    decode: Callable[[bytes | None], E]
    rejects: tuple[type[Exception], ...]
    # What a log line about one event says of it (e.g. its event_id and blog_id): JSON logs
    # carry these fields (`service_kit.logs`). Optional; only called on the per-record paths.
    log_fields: Callable[[E], Mapping[str, object]] | None = None


Record: TypeAlias = "ConsumerRecord[Any, Any]"


@dataclass
class PolledBatch(Generic[E]):
    """A polled batch, decoded, with the rebalance generation it was polled in."""

    generation: int
    polled_at: float
    partitions: frozenset[TopicPartition]  # those `records` were read from
    records: list[Record]
    events: list[ConsumedEvent[E]]
    undecodable: list[tuple[Record, str]]


def decode_records(
    records: Sequence[Record], decoder: Decoder[E]
) -> tuple[list[ConsumedEvent[E]], list[tuple[Record, str]]]:
    """The decodable records as events, and the others with the reason they failed."""
    events: list[ConsumedEvent[E]] = []
    undecodable: list[tuple[Record, str]] = []
    for record in records:
        try:
            envelope = decoder.decode(record.value)
        except decoder.rejects as exc:
            undecodable.append((record, str(exc)))
        else:
            events.append(
                ConsumedEvent(
                    envelope=envelope,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    timestamp_ms=record.timestamp,
                    key=record.key,
                )
            )
    return events, undecodable


async def decode_in_slices(
    records: Sequence[Record], decoder: Decoder[E]
) -> tuple[list[ConsumedEvent[E]], list[tuple[Record, str]]]:
    """`decode_records` in slices with a yield between them: the handler of the batch in hand
    then resumes as soon as its database answers, instead of waiting for the whole decode."""
    events: list[ConsumedEvent[E]] = []
    undecodable: list[tuple[Record, str]] = []
    for start in range(0, len(records), DECODE_SLICE):
        if start:
            await asyncio.sleep(0)
        sliced_events, sliced_undecodable = decode_records(
            records[start : start + DECODE_SLICE], decoder
        )
        events += sliced_events
        undecodable += sliced_undecodable
    return events, undecodable

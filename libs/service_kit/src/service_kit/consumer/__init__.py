"""The batch consumer every consumer group uses: at-least-once delivery from Kafka, turned into
exactly-once *effects* by the handler's idempotence, with offsets committed only after the
handler has made the batch durable.

One module per concern: `records` (decoded records, the handler type, the injected decoder),
`config`, `loop` (poll, read-ahead, settle, commit), `isolation` (retries, poison isolation),
`failures` (transient or record-level), `rebalance`, `dead_letter`, `offsets`, `metrics`.
The kit knows no event contract: a service passes its `Decoder` and its `IsTransient`.
"""

from service_kit.consumer.config import ConsumerConfig
from service_kit.consumer.dead_letter import (
    DLQ_HEADER_PREFIX,
    DLQ_REASON_MAX_BYTES,
    DeadLetterWriter,
    dlq_headers,
    truncate_utf8,
)
from service_kit.consumer.failures import (
    IsTransient,
    RejectedEvents,
    is_transient_by_default,
    transient_errors,
)
from service_kit.consumer.isolation import RetryPolicy, split
from service_kit.consumer.loop import BatchConsumer
from service_kit.consumer.metrics import ConsumerMetrics
from service_kit.consumer.offsets import commit_offsets, settled_prefix_offsets
from service_kit.consumer.records import (
    BatchHandler,
    ConsumedEvent,
    Decoder,
    decode_in_slices,
    decode_records,
)

__all__ = [
    "DLQ_HEADER_PREFIX",
    "DLQ_REASON_MAX_BYTES",
    "BatchConsumer",
    "BatchHandler",
    "ConsumedEvent",
    "ConsumerConfig",
    "ConsumerMetrics",
    "DeadLetterWriter",
    "Decoder",
    "IsTransient",
    "RejectedEvents",
    "RetryPolicy",
    "commit_offsets",
    "decode_in_slices",
    "decode_records",
    "dlq_headers",
    "is_transient_by_default",
    "settled_prefix_offsets",
    "split",
    "transient_errors",
    "truncate_utf8",
]

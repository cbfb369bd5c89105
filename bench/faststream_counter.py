"""The peer: the counter's handler logic under FastStream's Kafka batch subscriber (bench only).

    python -m bench.faststream_counter --bootstrap B --topic T --group G --database-url D

Same work per batch as the counter: every record decoded and validated by the same decoder
(`blog_events.fast.decode_event_fast`), folded to the newest change per blog, applied in one
PostgreSQL transaction by `counter.repository.apply_changes` (version guard, per-author
deltas). FastStream's batch subscriber (`batch=True`, `max_records` as the counter's
MAX_BATCH) with `AckPolicy.NACK_ON_ERROR`: the offsets are committed after the handler returns,
so the effect is durable first, like the counter (a failed batch is sought back, not committed;
`AckPolicy.ACK` would commit it anyway). A custom `decoder` hands over the record values as
bytes: FastStream's default would JSON-parse every record before our decoder parses it again.
It has no dead-letter queue (the bench backlog holds no poison; an undecodable record would
stop it) and no read-ahead. Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

import asyncpg
from faststream import AckPolicy
from faststream.kafka import KafkaBroker

from blog_events.fast import decode_event_fast
from counter import repository
from counter.counting import fold_newest_per_blog


async def record_values(message: Any) -> Any:
    """The batch's record values, as bytes (the StreamMessage's body)."""
    return message.body


async def consume(
    bootstrap: str, topic: str, group: str, database_url: str, max_batch: int
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    # FastStream logs every batch ("Received", "Processed") at `log_level`: DEBUG keeps them
    # below the process's WARNING, as the services' own logs are.
    broker = KafkaBroker(bootstrap, log_level=logging.DEBUG)

    @broker.subscriber(
        topic,
        group_id=group,
        batch=True,
        max_records=max_batch,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        decoder=record_values,
    )
    async def count(values: list[bytes]) -> None:
        events = [decode_event_fast(value) for value in values]
        await repository.apply_changes(pool, fold_newest_per_blog(events))

    await broker.start()
    try:
        await stopping.wait()
    finally:
        await broker.stop()
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--max-batch", type=int, default=500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(consume(args.bootstrap, args.topic, args.group, args.database_url, args.max_batch))


if __name__ == "__main__":
    main()

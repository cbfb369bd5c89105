"""The reference consume loop: `python -m bench.bare_consumer --topic T --group G`.

The consumer settings and loop shape of service_kit's BatchConsumer (manual commits, earliest,
`getmany(max_records=max_batch)`, commit `last offset + 1` per partition after each batch), with
no handler: the ceiling a Python consumer on aiokafka can reach. `--decode` also parses every
record with `blog_events.decode_event`, to show what the event contract alone costs.
`--overlap-commits` sends each batch's commit and polls the next batch while it is answered
(commits one at a time, in order), as BatchConsumer does since issue 14's third pass; without it
each commit is awaited before the next poll (the reference the issue's target was set against).
Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiokafka import AIOKafkaConsumer

from blog_events import decode_event
from service_kit.consumer import commit_offsets


async def consume(
    bootstrap: str,
    topic: str,
    group: str,
    max_batch: int,
    poll_timeout_ms: int,
    decode: bool,
    overlap_commits: bool,
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    in_flight: asyncio.Task[None] | None = None
    try:
        while not stopping.is_set():
            batches = await consumer.getmany(timeout_ms=poll_timeout_ms, max_records=max_batch)
            records = [record for partition in batches.values() for record in partition]
            if not records:
                continue
            if decode:
                for record in records:
                    decode_event(record.value)
            if not overlap_commits:
                await consumer.commit(commit_offsets(records))
                continue
            if in_flight is not None:
                await in_flight
            in_flight = asyncio.create_task(consumer.commit(commit_offsets(records)))
        if in_flight is not None:
            await in_flight
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--max-batch", type=int, default=500)
    parser.add_argument("--poll-timeout-ms", type=int, default=200)
    parser.add_argument("--decode", action="store_true")
    parser.add_argument("--overlap-commits", action="store_true")
    args = parser.parse_args()
    asyncio.run(
        consume(
            args.bootstrap,
            args.topic,
            args.group,
            args.max_batch,
            args.poll_timeout_ms,
            args.decode,
            args.overlap_commits,
        )
    )


if __name__ == "__main__":
    main()

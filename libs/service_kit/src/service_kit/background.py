"""A BatchConsumer run as a service's background task, from the service's lifespan: the same
start, health and graceful stop for every consumer group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Generic

from service_kit.consumer import (
    BatchConsumer,
    BatchHandler,
    ConsumerConfig,
    ConsumerMetrics,
    Decoder,
    IsTransient,
    is_transient_by_default,
)
from service_kit.consumer.records import E
from service_kit.kafka_admin import ensure_topics

log = logging.getLogger(__name__)

# How long shutdown waits for the batch in hand to finish and commit before cancelling it.
DEFAULT_STOP_TIMEOUT_S = 20.0


class BackgroundConsumer(Generic[E]):
    def __init__(self, consumer: BatchConsumer[E], task: asyncio.Task[None]) -> None:
        self.consumer = consumer
        self.task = task

    @property
    def healthy(self) -> bool:
        """Running, and its handler is not failing (a dead task is never healthy)."""
        return not self.task.done() and self.consumer.healthy

    async def stop(self, timeout_s: float) -> None:
        """Finish and commit the batch in hand, leave the group; if that hangs (a stuck handler),
        cancel: the uncommitted batch is delivered again and its effect is idempotent."""
        try:
            await asyncio.wait_for(self.consumer.stop(), timeout_s)
            await asyncio.wait_for(self.task, timeout_s)
        except TimeoutError:
            log.error("consumer did not stop within %.0fs; cancelling it", timeout_s)
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        except Exception:
            log.exception("consumer ended with an error")


def _log_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("consumer stopped by an error", exc_info=task.exception())


@contextlib.asynccontextmanager
async def consuming(
    config: ConsumerConfig,
    handler: BatchHandler[E],
    metrics: ConsumerMetrics | None,
    *,
    decoder: Decoder[E],
    is_transient: IsTransient = is_transient_by_default,
    partitions: int,
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
) -> AsyncIterator[BackgroundConsumer[E]]:
    """Ensure the topic and its DLQ exist, run the consumer in the background while the block
    runs, and stop it gracefully when the block exits."""
    await ensure_topics(
        config.bootstrap_servers, {config.topic: partitions, config.dlq_topic: partitions}
    )
    consumer = BatchConsumer(config, handler, metrics, decoder=decoder, is_transient=is_transient)
    await consumer.start()
    task = asyncio.create_task(consumer.run(), name=f"{config.group_id}-consumer")
    task.add_done_callback(_log_end)
    background = BackgroundConsumer(consumer, task)
    try:
        yield background
    finally:
        await background.stop(stop_timeout_s)

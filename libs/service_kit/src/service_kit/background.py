"""A BatchConsumer run as a service's background task, from the service's lifespan: the same
start, health and graceful stop for every consumer group.

Two questions, two probes:
- alive (`died`, for /healthz): the task still runs. It may be waiting for its topics, retrying a
  failed start or a dependency outage: that is not a reason to restart the process. Once the
  task has ended by itself (an error escaped the loop: a decoder or kit bug, a fatal Kafka error,
  a handler raising a BaseException or cancelling it), nothing will consume again in this
  process: /healthz answers 503 so the orchestrator restarts it.
- ready (`healthy` / `problem`, for /readyz): consuming, and the handler is not failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

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
from service_kit.kafka_admin import wait_for_topics

log = logging.getLogger(__name__)

# How long shutdown waits for the batch in hand to finish and commit before cancelling it.
DEFAULT_STOP_TIMEOUT_S = 20.0
# How often a consumer waiting for its topics asks Kafka again, and retries a failed start.
DEFAULT_TOPIC_WAIT_INTERVAL_S = 2.0
DEFAULT_START_RETRY_S = 2.0


class BackgroundConsumer(Generic[E]):
    """A consumer group member run as a task: first it waits for its topics (the source topic and
    its dead-letter topic; services never create topics, each team applies its topics file),
    then it consumes until stopped."""

    def __init__(
        self,
        consumer: BatchConsumer[E],
        *,
        topic_wait_interval_s: float = DEFAULT_TOPIC_WAIT_INTERVAL_S,
        start_retry_s: float = DEFAULT_START_RETRY_S,
    ) -> None:
        self.consumer = consumer
        self._topic_wait_interval_s = topic_wait_interval_s
        self._start_retry_s = start_retry_s
        # Why the consumer is not consuming yet (None once it is), for /readyz.
        self.waiting_for: str | None = "starting"
        self._stop_requested = False
        self.task: asyncio.Task[None] = asyncio.create_task(
            self._run(), name=f"{consumer.config.group_id}-consumer"
        )
        self.task.add_done_callback(self._log_end)

    @property
    def healthy(self) -> bool:
        """Consuming, and its handler is not failing (a dead task is never healthy)."""
        return self.waiting_for is None and not self.task.done() and self.consumer.healthy

    @property
    def died(self) -> str | None:
        """Why the consumer task ended by itself (None while it runs, waits or retries, and once
        stop() was asked for): the process is no longer alive for its purpose."""
        if not self.task.done() or self._stop_requested:
            return None
        if self.task.cancelled():
            return "consumer task cancelled"
        error = self.task.exception()
        if error is None:
            return "consumer task ended"
        return f"consumer task died: {type(error).__name__}: {error}"[:500]

    @property
    def problem(self) -> str | None:
        """Why it is not healthy, in words (None when healthy)."""
        if self.healthy:
            return None
        if self.task.done():
            return "consumer stopped"
        if self.waiting_for is not None:
            return f"waiting: {self.waiting_for}"
        return "handler failing (retrying)"

    def _log_end(self, task: asyncio.Task[None]) -> None:
        if self._stop_requested:
            return
        if task.cancelled() or task.exception() is None:
            log.critical("%s: %s; /healthz answers 503 from now on", task.get_name(), self.died)
        else:
            log.critical(
                "%s died; /healthz answers 503 from now on",
                task.get_name(),
                exc_info=task.exception(),
            )

    async def _run(self) -> None:
        config = self.consumer.config
        topics = [*config.topics, config.dlq_topic]

        def on_change(why: str | None) -> None:
            self.waiting_for = why
            if why is None:
                log.info("group %s: topics %s present", config.group_id, ", ".join(topics))
            else:
                # Once per change of reason, not per poll.
                log.warning(
                    "group %s waits before consuming: %s (each team creates its topics: "
                    "`make topics`, or `python -m <service> topics apply`)",
                    config.group_id,
                    why,
                )

        while True:
            await wait_for_topics(
                config.bootstrap_servers,
                topics,
                on_change=on_change,
                interval_s=self._topic_wait_interval_s,
            )
            try:
                await self.consumer.start()
                break
            except Exception as exc:
                self.waiting_for = f"cannot start the consumer: {type(exc).__name__}: {exc}"
                log.warning("group %s: %s; retrying", config.group_id, self.waiting_for)
                await asyncio.sleep(self._start_retry_s)
        self.waiting_for = None
        await self.consumer.run()

    async def stop(self, timeout_s: float) -> None:
        """Finish and commit the batch in hand, leave the group; if that hangs (a stuck handler),
        cancel: the uncommitted batch is delivered again and its effect is idempotent. Before
        the poll loop (waiting for topics, retrying or still in the clients' start) there is
        nothing to finish: that is cancelled, and what the start opened is closed."""
        self._stop_requested = True
        if self.task.done() or not self.consumer.loop_started:
            # It ended by itself (see `died`; already logged), or it is not in the poll loop yet:
            # nothing to finish. A start cut short closes its clients itself; a start that
            # finished is closed by consumer.stop() (else it stays in the group until its
            # session times out).
            await self._cancel_task(timeout_s)
            try:
                await asyncio.wait_for(self.consumer.stop(), timeout_s)
            except Exception as exc:
                log.warning("closing the consumer failed: %r", exc)
            return
        try:
            await asyncio.wait_for(self.consumer.stop(), timeout_s)
            await asyncio.wait_for(self.task, timeout_s)
        except TimeoutError:
            log.error("consumer did not stop within %.0fs; cancelling it", timeout_s)
            await self._cancel_task(timeout_s)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is None or current.cancelling():
                raise  # this shutdown itself is being cancelled
            # The consumer task ended cancelled though nobody here cancelled it. It has closed
            # its clients (`_stopped` is only set then); whatever it had not committed is
            # delivered again, and its effect is idempotent.
            log.warning("the consumer task was cancelled while it stopped; shutdown goes on")
        except Exception:
            log.exception("consumer ended with an error")

    async def _cancel_task(self, timeout_s: float) -> None:
        if self.task.done():
            return  # what it ended with is `died`'s (a BaseException from a handler included)
        self.task.cancel()
        # Bounded too: the cancelled task still closes its clients (a broker may be gone).
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.task, timeout_s)


@contextlib.asynccontextmanager
async def consuming(
    config: ConsumerConfig,
    handler: BatchHandler[E],
    metrics: ConsumerMetrics | None,
    *,
    decoder: Decoder[E],
    is_transient: IsTransient = is_transient_by_default,
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    topic_wait_interval_s: float = DEFAULT_TOPIC_WAIT_INTERVAL_S,
) -> AsyncIterator[BackgroundConsumer[E]]:
    """Run the consumer in the background while the block runs (it starts consuming once its
    topic and dead-letter topic exist; `problem` says why not yet), and stop it gracefully
    when the block exits."""
    consumer = BatchConsumer(config, handler, metrics, decoder=decoder, is_transient=is_transient)
    background = BackgroundConsumer(consumer, topic_wait_interval_s=topic_wait_interval_s)
    try:
        yield background
    finally:
        await background.stop(stop_timeout_s)


def install_liveness(
    app: FastAPI, consumer_of: Callable[[Request], BackgroundConsumer[Any] | None]
) -> None:
    """GET /healthz for a consumer service: 503 `{"status": "dead", "consumer": why}` once the
    consumer task died, else 200 (waiting for its topics or retrying an outage included: that is
    /readyz's 503). `consumer_of(request)` is None before the lifespan built it, or when
    consumption is off."""

    @app.get(
        "/healthz",
        responses={503: {"description": "Not alive: the consumer task died (restart the process)"}},
    )
    async def healthz(request: Request) -> JSONResponse:
        consumer = consumer_of(request)
        died = consumer.died if consumer is not None else None
        if died is not None:
            return JSONResponse({"status": "dead", "consumer": died}, status_code=503)
        return JSONResponse({"status": "ok"})

"""Fault injection for tests, kept out of the services' settings: a service run by
`python -m blog_testkit.faults` gets its batch handler (consumers) or its ASGI app (publisher)
wrapped by the faults named in the environment. Production code only offers the seams
(`main(..., wrap_handler=...)`, `main(..., wrap_app=...)`).

    BLOG_FAULTY_SERVICE=counter            the service to run (its own settings apply)
    BLOG_FAULT_CRASH_AFTER_BATCHES=1       os._exit(137) after n handled batches, before the
                                           offset commit (effect durable, offsets not committed)
    BLOG_FAULT_FAIL_KEYS=<key>[,<key>...]  the handler raises for a batch holding a record with
                                           one of these keys (the blog id)
    BLOG_FAULT_KILL_LOOP_KEYS=<key>[,...]  the handler raises `LoopKilled` (a BaseException, which
                                           nothing in the kit catches) for a batch holding one
                                           of these keys: the consumer task dies, the process
                                           stays up (a liveness probe must notice)
    BLOG_FAULT_KILL_BEFORE_ANSWERING="POST /blogs"
                                           SIGKILL itself once such a request is done (its
                                           transaction committed) and before the answer is sent

`faulty_service_env` builds those variables; run the module with the `service_processes`
fixture (`FAULTY_SERVICE_MODULE` as the module name).
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service_kit.consumer import BatchHandler, ConsumedEvent

log = logging.getLogger(__name__)

FAULTY_SERVICE_MODULE = "blog_testkit.faults"
CRASH_EXIT_CODE = 137  # what a SIGKILL looks like to a supervisor
CRASH_LOG_LINE = "fault injection: exiting after effect, before commit"
INJECTED_FAILURE = "injected failure for key"

HandlerWrapper = Callable[[BatchHandler[Any]], BatchHandler[Any]]


class InjectedFault(RuntimeError):
    """Raised by a handler wrapped with `fail_for_keys` (not a transient error)."""


class LoopKilled(BaseException):
    """Raised by a handler wrapped with `kill_loop_for_keys`: not an Exception, so it escapes the
    consumer's retries and isolation and ends the consumer task, as a bug escaping the loop
    would (the process keeps serving HTTP)."""


def crash_after_batches(limit: int) -> HandlerWrapper:
    """Exit the process like a SIGKILL right after the `limit`-th handled batch returned (its
    effect is durable) and before the consumer commits its offsets."""

    def wrap(handler: BatchHandler[Any]) -> BatchHandler[Any]:
        handled = 0

        async def crashing(batch: Sequence[ConsumedEvent[Any]]) -> None:
            nonlocal handled
            await handler(batch)
            handled += 1
            if handled >= limit:
                log.critical(CRASH_LOG_LINE)
                logging.shutdown()
                os._exit(CRASH_EXIT_CODE)

        return crashing

    return wrap


def fail_for_keys(keys: Collection[bytes]) -> HandlerWrapper:
    """The handler raises `InjectedFault` for any batch that holds a record with one of `keys`;
    other batches are handled as usual."""
    poisoned = frozenset(keys)

    def wrap(handler: BatchHandler[Any]) -> BatchHandler[Any]:
        async def failing(batch: Sequence[ConsumedEvent[Any]]) -> None:
            for event in batch:
                if event.key in poisoned:
                    key = event.key.decode() if event.key else ""
                    raise InjectedFault(f"{INJECTED_FAILURE} {key}")
            await handler(batch)

        return failing

    return wrap


def kill_loop_for_keys(keys: Collection[bytes]) -> HandlerWrapper:
    """The handler raises `LoopKilled` for any batch holding a record with one of `keys`."""
    fatal = frozenset(keys)

    def wrap(handler: BatchHandler[Any]) -> BatchHandler[Any]:
        async def killing(batch: Sequence[ConsumedEvent[Any]]) -> None:
            for event in batch:
                if event.key in fatal:
                    raise LoopKilled(f"injected loop kill for key {event.key!r}")
            await handler(batch)

        return killing

    return wrap


class HandlerSwitch:
    """For in-process tests: wraps a handler (`wrap`, the composition root's `wrap_handler`), and
    `mode` says what it does: "pass" (the real handler), "outage" (a transient OSError, retried
    without limit: the service is alive but not ready) or "kill" (raises `fatal()`, which ends
    the consumer task: the service is no longer alive)."""

    def __init__(self, fatal: Callable[[], BaseException]) -> None:
        self.mode = "pass"
        self._fatal = fatal

    def wrap(self, handler: BatchHandler[Any]) -> BatchHandler[Any]:
        async def switched(batch: Sequence[ConsumedEvent[Any]]) -> None:
            if self.mode == "outage":
                raise ConnectionRefusedError("injected outage: the database refuses connections")
            if self.mode == "kill":
                raise self._fatal()
            await handler(batch)

        return switched


def kill_before_answering(method: str, path: str) -> Callable[[ASGIApp], ASGIApp]:
    """SIGKILL the process when a `method path` request has been handled (its effect durable)
    and its answer is about to be sent: the client is left not knowing."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def dying(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or (scope["method"], scope["path"]) != (method, path):
                await app(scope, receive, send)
                return

            async def send_or_die(message: Message) -> None:
                if message["type"] == "http.response.start":
                    log.critical("%s: killed before answering %s %s", CRASH_LOG_LINE, method, path)
                    logging.shutdown()
                    os.kill(os.getpid(), signal.SIGKILL)
                await send(message)

            await app(scope, receive, send_or_die)

        return dying

    return wrap


def faulty_service_env(
    service: str,
    port: int,
    *,
    crash_after: int | None = None,
    fail_keys: Collection[str] = (),
    kill_loop_keys: Collection[str] = (),
    kill_before_answering: str | None = None,
) -> dict[str, str]:
    """The environment that makes `python -m blog_testkit.faults` run `service` on `port` with
    these faults (merge it over the service's own settings)."""
    env = {"BLOG_FAULTY_SERVICE": service, f"{service.upper()}_PORT": str(port)}
    if crash_after is not None:
        env["BLOG_FAULT_CRASH_AFTER_BATCHES"] = str(crash_after)
    if fail_keys:
        env["BLOG_FAULT_FAIL_KEYS"] = ",".join(fail_keys)
    if kill_loop_keys:
        env["BLOG_FAULT_KILL_LOOP_KEYS"] = ",".join(kill_loop_keys)
    if kill_before_answering:
        env["BLOG_FAULT_KILL_BEFORE_ANSWERING"] = kill_before_answering
    return env


def wrapper_from_env(environ: Mapping[str, str]) -> HandlerWrapper:
    wrappers: list[HandlerWrapper] = []
    if keys := environ.get("BLOG_FAULT_FAIL_KEYS"):
        wrappers.append(fail_for_keys({key.encode() for key in keys.split(",") if key}))
    if keys := environ.get("BLOG_FAULT_KILL_LOOP_KEYS"):
        wrappers.append(kill_loop_for_keys({key.encode() for key in keys.split(",") if key}))
    if limit := environ.get("BLOG_FAULT_CRASH_AFTER_BATCHES"):
        wrappers.append(crash_after_batches(int(limit)))

    def wrap(handler: BatchHandler[Any]) -> BatchHandler[Any]:
        for wrapper in wrappers:
            handler = wrapper(handler)
        return handler

    return wrap


def main() -> int:
    service = os.environ.get("BLOG_FAULTY_SERVICE")
    if not service:
        print("set BLOG_FAULTY_SERVICE to the consumer service to run", file=sys.stderr)
        return 2
    entry = importlib.import_module(f"{service}.__main__")
    request = os.environ.get("BLOG_FAULT_KILL_BEFORE_ANSWERING")
    if request:
        method, _, path = request.partition(" ")
        code: int = entry.main([], wrap_app=kill_before_answering(method, path))
    else:
        code = entry.main([], wrap_handler=wrapper_from_env(os.environ))
    return code


if __name__ == "__main__":
    sys.exit(main())

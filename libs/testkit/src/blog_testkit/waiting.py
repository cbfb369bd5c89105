"""Deadline-bounded polling: the only way tests wait for asynchronous outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    predicate: Callable[[], Awaitable[T]],
    *,
    timeout: float,  # noqa: ASYNC109 - a deadline for the polling, part of the interface
    what: str,
    interval: float = 0.1,
) -> T:
    """Await `predicate()` until it returns a truthy value, and return that value.

    An exception from the predicate counts as "not yet" (a service that is still starting
    refuses connections); the last one is named in the AssertionError raised at the deadline,
    together with the last falsy value, so a timeout says what was seen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_value: object = None
    last_error: BaseException | None = None
    while True:
        try:
            value = await predicate()
        except Exception as exc:
            last_error = exc
        else:
            if value:
                return value
            last_value = value
            last_error = None
        if loop.time() >= deadline:
            seen = (
                f"last error: {type(last_error).__name__}: {last_error}"
                if last_error is not None
                else f"last value: {last_value!r}"
            )
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} ({seen})")
        await asyncio.sleep(interval)

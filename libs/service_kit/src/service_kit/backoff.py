"""Bounded exponential backoff with full jitter, so replicas that failed together (the database
came back, the broker restarted) do not retry in lockstep."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int,
    initial_s: float,
    max_s: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max_s, initial_s * 2**(attempt-1))].

    `attempt` counts failures so far (1 after the first). Jitter spreads the retries of many
    instances that failed together (e.g. the database came back)."""
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    # Cap the exponent so a long outage cannot overflow the float.
    ceiling = min(max_s, initial_s * 2.0 ** min(attempt - 1, 62))
    return ceiling * rand()


class Backoff:
    """Consecutive-failure counter around `backoff_delay`, for retry loops."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self._initial_s = initial_s
        self._max_s = max_s
        self._failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; its ceiling grows with each consecutive failure."""
        self._failures += 1
        return backoff_delay(self._failures, self._initial_s, self._max_s)

    def reset(self) -> None:
        self._failures = 0

    @property
    def failures(self) -> int:
        return self._failures

"""Write rate limiting: one token bucket per author, kept in this process's memory.

Per process on purpose: no shared store to reach on every write. With N replicas an author may
write up to N times the configured rate (each replica keeps its own buckets)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

# Above this many buckets, the full ones are dropped: a full bucket behaves exactly like a
# missing one, so forgetting it changes nothing, and memory stays bounded by the active writers.
PRUNE_ABOVE_BUCKETS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated_at: float


class TokenBucketLimiter:
    """`rate_per_s` requests per second per key, bursts up to `burst`. Not thread-safe: it is used
    from one event loop, and no `await` happens between reading and updating a bucket."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[Hashable, _Bucket] = {}

    def acquire(self, key: Hashable) -> float | None:
        """Take one token for `key`: None when allowed, else the seconds until one is available."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= PRUNE_ABOVE_BUCKETS:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            elapsed = max(0.0, now - bucket.updated_at)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)
            bucket.updated_at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.rate_per_s

    def _prune(self, now: float) -> None:
        full_after_s = self.burst / self.rate_per_s
        for key in [k for k, b in self._buckets.items() if now - b.updated_at >= full_after_s]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(wait_s: float) -> str:
    """Retry-After is whole seconds; never 0, which would invite an immediate retry storm."""
    return str(max(1, math.ceil(wait_s)))

"""Per-key token buckets: the gateway's per-agency request rate and event quota, and its
failed authentications per client address.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a request
takes ``cost`` tokens (1 per request, or the number of events of a batch) or, when there are
not enough, is refused with the seconds after which it would fit (the ``Retry-After`` of the
429).  Pure and thread-safe; the clock is injectable for tests.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by key (an agency id); ``rate <= 0`` turns the limiter off."""

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        #: Keys chosen by clients (addresses) must not grow the table without bound.
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens of ``key``'s bucket: 0.0 when granted, else the seconds to wait
        before the same request would be granted (nothing is taken then)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self.max_keys:
                    self._prune(now)
                bucket = self._buckets[key] = _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if cost <= bucket.tokens:
                bucket.tokens -= cost
                return 0.0
            if cost > self.burst:  # never fits: the caller's limits are inconsistent
                return math.inf
            return (cost - bucket.tokens) / self.rate

    def _prune(self, now: float) -> None:
        """Forget full buckets (same as new); if still too many, the least recently used half."""
        full = [
            k
            for k, b in self._buckets.items()
            if b.tokens + (now - b.updated) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:
            by_age = sorted(self._buckets, key=lambda k: self._buckets[k].updated)
            for k in by_age[: len(by_age) // 2 + 1]:
                del self._buckets[k]


def retry_after(seconds: float) -> str:
    """The ``Retry-After`` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))

"""Per-credential token buckets (one per worker process; the rate is split across workers)."""

from __future__ import annotations

import time

from medserve.core.errors import RateLimitedError

_MAX_BUCKETS = 100_000


class RateLimiter:
    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def check(self, key: str, rate_per_s: float) -> None:
        """Take one token for ``key`` or raise ``RateLimitedError`` with a Retry-After."""
        rate = rate_per_s / self.workers
        burst = max(1.0, rate)
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimitedError(
                f"rate limit of {rate_per_s:g} requests/s exceeded for this credential",
                retry_after_s=(1.0 - tokens) / rate,
            )
        if len(self._buckets) >= _MAX_BUCKETS and key not in self._buckets:
            self._buckets.clear()
        self._buckets[key] = (tokens - 1.0, now)

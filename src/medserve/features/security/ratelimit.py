"""Per-credential rate limits.

``RateLimiter``: token buckets in the worker process's memory, the rate split across workers (the
default: no I/O per request). ``SharedRateLimiter``: one count per credential for a whole
deployment, in the registry's PostgreSQL (the Ray backend, whose replicas may be many, on
several nodes, and receive uneven shares of a client's requests).
"""

from __future__ import annotations

import logging
import time

from medserve.core.errors import RateLimitedError, StoreError
from medserve.core.store.counters import SharedCounters, key_digest

log = logging.getLogger(__name__)

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


RATE_SCOPE = "rate"
_WARN_EVERY_S = 60.0


def rate_window(rate_per_s: float, window_s: float = 1.0) -> tuple[float, int]:
    """The fixed window (seconds) and the requests it admits for ``rate_per_s``: ``window_s``
    and floor(rate x window), or, where that is under one request, one per 1/rate seconds."""
    window = max(window_s, 1.0 / rate_per_s)
    return window, max(1, int(rate_per_s * window + 1e-9))


class SharedRateLimiter:
    """A credential's limit counted once for every replica of a deployment: a fixed window per
    credential in ``cluster_counters`` (one PostgreSQL statement per check). Together, any
    number of replicas admit exactly the window's limit; at a window's edge a client may get up
    to twice the limit within one second, as with any fixed window.

    The credential is stored as a digest (an OIDC subject may name a person). When the database
    does not answer, each replica falls back to its in-memory share (``fallback``): a limit is
    protection, and refusing every request while PostgreSQL fails over would be an outage."""

    def __init__(
        self, counters: SharedCounters, fallback: RateLimiter, *, window_s: float = 1.0
    ) -> None:
        self.counters = counters
        self.fallback = fallback
        self.window_s = window_s
        self._warned_at = -_WARN_EVERY_S

    def check(self, key: str, rate_per_s: float) -> None:
        """Count one request for ``key`` or raise ``RateLimitedError`` with a Retry-After."""
        window_s, limit = rate_window(rate_per_s, self.window_s)
        try:
            total, left_s = self.counters.add(RATE_SCOPE, key_digest(key), window_s)
        except StoreError as exc:
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY_S:
                self._warned_at = now
                log.warning("shared rate limits unavailable, per-replica share used: %s", exc)
            self.fallback.check(key, rate_per_s)
            return
        if total > limit:
            raise RateLimitedError(
                f"rate limit of {rate_per_s:g} requests/s exceeded for this credential",
                retry_after_s=max(left_s, 0.001),
            )

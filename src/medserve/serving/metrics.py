"""Prometheus metrics for serving, labelled by model and version.

With several worker processes the server sets ``PROMETHEUS_MULTIPROC_DIR`` so that ``/metrics``
aggregates every worker (prometheus-client's multiprocess mode). There every increment writes a
memory-mapped file, so the per-request counts are kept in plain integers (bucketed the way a
Histogram buckets them) and flushed into the Prometheus objects once a second by the server, and
by ``render`` before it reads them: ``/metrics`` is at most a second behind for other workers.
"""

from __future__ import annotations

import asyncio
import os
import re
from bisect import bisect_left
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUESTS = Counter(
    "medserve_requests_total",
    "Prediction requests by model, version, protocol and HTTP status.",
    ["model", "version", "protocol", "status"],
)
LATENCY = Histogram(
    "medserve_request_duration_seconds",
    "Time from body received to response ready, by model, version and protocol.",
    ["model", "version", "protocol"],
    buckets=LATENCY_BUCKETS,
)
ROWS = Counter("medserve_rows_total", "Rows predicted.", ["model", "version"])
BATCH_SIZE = Histogram(
    "medserve_batch_size_rows",
    "Rows per runtime call (after adaptive batching).",
    ["model", "version"],
    buckets=BATCH_BUCKETS,
)
ERRORS = Counter(
    "medserve_errors_total", "Failed requests by error code.", ["model", "version", "code"]
)


PROTOCOLS = ("v2", "records")
_ALL: list[ModelMetrics] = []


@dataclass
class ModelMetrics:
    """Children resolved once per (model, version) (``labels()`` is too slow per request), and
    the counts of the requests since the last flush."""

    model: str
    version: str
    _pending: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rows = ROWS.labels(self.model, self.version)
        self.batch = BATCH_SIZE.labels(self.model, self.version)
        self.ok = {p: REQUESTS.labels(self.model, self.version, p, "200") for p in PROTOCOLS}
        self.latency = {p: LATENCY.labels(self.model, self.version, p) for p in PROTOCOLS}
        # per protocol: [requests, rows, latency sum, count per bucket (the last is +Inf)...]
        self._pending = {p: [0, 0, 0.0] + [0] * (len(LATENCY_BUCKETS) + 1) for p in PROTOCOLS}
        _ALL.append(self)

    def observe(self, protocol: str, seconds: float, rows: int) -> None:
        pending = self._pending[protocol]
        pending[0] += 1
        pending[1] += rows
        pending[2] += seconds
        pending[3 + bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def flush(self) -> None:
        """Move the pending counts into the Prometheus objects (their files, with workers)."""
        for protocol, pending in self._pending.items():
            if not pending[0]:
                continue
            self.ok[protocol].inc(pending[0])
            self.rows.inc(pending[1])
            histogram = self.latency[protocol]
            histogram._sum.inc(pending[2])  # as Histogram.observe does, a bucket at a time
            for i, count in enumerate(pending[3:]):
                if count:
                    histogram._buckets[i].inc(count)
            self._pending[protocol] = [0, 0, 0.0] + [0] * (len(LATENCY_BUCKETS) + 1)


def flush() -> None:
    """Flush every model's pending counts (the server calls this once a second)."""
    for model_metrics in _ALL:
        model_metrics.flush()


@contextmanager
def flushing(interval_s: float) -> Iterator[None]:
    """Flush every ``interval_s`` on the running event loop (where the counts are made), and
    once more at the end."""
    loop = asyncio.get_running_loop()
    handle: asyncio.TimerHandle | None = None

    def tick() -> None:
        nonlocal handle
        flush()
        handle = loop.call_later(interval_s, tick)

    handle = loop.call_later(interval_s, tick)
    try:
        yield
    finally:
        handle.cancel()
        flush()


def record_error(model: str, version: str, protocol: str, status: int, code: str) -> None:
    REQUESTS.labels(model, version, protocol, str(status)).inc()
    ERRORS.labels(model, version, code).inc()


def render() -> bytes:
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(DEFAULT_REGISTRY)


_MODEL_LABEL = re.compile(rb'model="((?:[^"\\]|\\.)*)"')


def only_models(text: bytes, visible: Callable[[str], bool]) -> bytes:
    """The exposition ``text`` without the samples of models ``visible`` refuses (series with
    no model label are kept)."""
    kept = []
    for line in text.splitlines(keepends=True):
        found = _MODEL_LABEL.search(line)
        if found is None or visible(found.group(1).decode("utf-8", "replace")):
            kept.append(line)
    return b"".join(kept)

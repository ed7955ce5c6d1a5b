"""Prometheus metrics for serving, labelled by model and version.

With several worker processes the server sets ``PROMETHEUS_MULTIPROC_DIR`` so that ``/metrics``
aggregates every worker (prometheus-client's multiprocess mode). There every increment writes a
memory-mapped file, so the per-request counts are kept in plain integers (bucketed the way a
Histogram buckets them) and flushed into the Prometheus objects once a second by the server, and
by ``render`` before it reads them: ``/metrics`` is at most a second behind for other workers.
"""

from __future__ import annotations

import asyncio
import logging
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
from prometheus_client import values as prometheus_values
from prometheus_client.mmap_dict import MmapedDict

log = logging.getLogger(__name__)
_INITIAL_FILE_BYTES = 1024 * 1024  # prometheus-client's first size of a metrics file


class AllocatedMmapedDict(MmapedDict):
    """prometheus-client's memory-mapped metrics file, its blocks allocated before they are
    mapped. The library grows a file with ``truncate`` (a sparse file) and maps it: on a full
    disk the first store into an unallocated page kills the worker with SIGBUS. Allocated first
    (``posix_fallocate``), a full disk is an ``OSError`` here instead, which the metrics code
    catches: the worker keeps serving, its counts wait for room."""

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if not read_mode:
            fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < _INITIAL_FILE_BYTES:
                    os.posix_fallocate(fd, 0, _INITIAL_FILE_BYTES)
            finally:
                os.close(fd)
        super().__init__(filename, read_mode)  # type: ignore[no-untyped-call]

    def _init_value(self, key: str) -> None:
        needed = self._used + len(key.encode("utf-8")) + 32  # the entry, padding included
        capacity = self._capacity
        while needed > capacity:
            capacity *= 2
        if capacity != self._capacity:
            os.posix_fallocate(self._f.fileno(), 0, capacity)
        super()._init_value(key)  # type: ignore[no-untyped-call]


prometheus_values.MmapedDict = AllocatedMmapedDict  # type: ignore[attr-defined]  # used when a worker opens its files

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


PROTOCOLS = ("v2", "records", "grpc")  # grpc: the v2 protocol over gRPC (docs/grpc.md)
_ALL: list[ModelMetrics] = []


@dataclass
class ModelMetrics:
    """Children resolved once per (model, version) (``labels()`` is too slow per request), and
    the counts of the requests since the last flush."""

    model: str
    version: str
    _pending: dict[str, list[float]] = field(default_factory=dict)
    _batches: list[int] = field(default_factory=list)  # rows per runtime call, until flushed

    def __post_init__(self) -> None:
        # per protocol: [requests, rows, latency sum, count per bucket (the last is +Inf)...]
        self._pending = {p: [0, 0, 0.0] + [0] * (len(LATENCY_BUCKETS) + 1) for p in PROTOCOLS}
        self._children = False  # made at the first flush: with workers they open files
        self.batch = BatchSizes(self._batches)
        _ALL.append(self)

    def _resolve(self) -> None:
        self.rows = ROWS.labels(self.model, self.version)
        self.batch_sizes = BATCH_SIZE.labels(self.model, self.version)
        self.ok = {p: REQUESTS.labels(self.model, self.version, p, "200") for p in PROTOCOLS}
        self.latency = {p: LATENCY.labels(self.model, self.version, p) for p in PROTOCOLS}
        self._children = True

    def observe(self, protocol: str, seconds: float, rows: int) -> None:
        pending = self._pending[protocol]
        pending[0] += 1
        pending[1] += rows
        pending[2] += seconds
        pending[3 + bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def flush(self) -> None:
        """Move the pending counts into the Prometheus objects (their files, with workers)."""
        if not self._children:
            self._resolve()
        if self._batches:
            sizes, self._batches[:] = list(self._batches), []
            for size in sizes:
                self.batch_sizes.observe(size)
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


@dataclass
class BatchSizes:
    """``observe`` for the batch-size histogram, kept until the next flush (no file write on the
    request path)."""

    sizes: list[int]

    def observe(self, rows: int) -> None:
        if len(self.sizes) < _MOST_PENDING:  # bounded while flushes fail (a full disk)
            self.sizes.append(rows)


_MOST_PENDING = 100_000
_unflushed = 0  # flushes that failed (the metrics files' disk is full): counts kept for later


def flush() -> None:
    """Flush every model's pending counts (the server calls this once a second). A metrics
    file that cannot be written (a full disk) leaves the counts pending: never an error here."""
    global _unflushed
    for model_metrics in _ALL:
        try:
            model_metrics.flush()
        except OSError as exc:
            _unflushed += 1
            if _unflushed == 1 or _unflushed % 600 == 0:
                log.error(
                    "metrics could not be written (%s); counts are kept until there is room",
                    type(exc).__name__,
                )


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
    try:
        REQUESTS.labels(model, version, protocol, str(status)).inc()
        ERRORS.labels(model, version, code).inc()
    except OSError:  # the metrics files' disk is full: the answer matters more than its count
        global _unflushed
        _unflushed += 1


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

"""Prometheus metrics for serving, labelled by model and version.

With several worker processes the server sets ``PROMETHEUS_MULTIPROC_DIR`` so that ``/metrics``
aggregates every worker (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
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


@dataclass
class ModelMetrics:
    """Children resolved once per (model, version): ``labels()`` is too slow per request."""

    model: str
    version: str
    _latency: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rows = ROWS.labels(self.model, self.version)
        self.batch = BATCH_SIZE.labels(self.model, self.version)
        self.ok = {
            p: REQUESTS.labels(self.model, self.version, p, "200") for p in ("v2", "records")
        }
        self.latency = {p: LATENCY.labels(self.model, self.version, p) for p in ("v2", "records")}

    def observe(self, protocol: str, seconds: float, rows: int) -> None:
        self.ok[protocol].inc()
        self.latency[protocol].observe(seconds)
        self.rows.inc(rows)


def record_error(model: str, version: str, protocol: str, status: int, code: str) -> None:
    REQUESTS.labels(model, version, protocol, str(status)).inc()
    ERRORS.labels(model, version, code).inc()


def render() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(DEFAULT_REGISTRY)

"""Prometheus metrics of the monitoring itself (multiprocess-safe: gauges declare how to merge)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LOG_QUEUE_DEPTH = Gauge(
    "medserve_monitor_log_queue_depth",
    "Prediction-log rows waiting to be written, per worker process (summed).",
    multiprocess_mode="livesum",
)
LOG_WRITTEN = Counter(
    "medserve_monitor_log_rows_written_total", "Prediction-log rows written to the store."
)
LOG_DROPPED = Counter(
    "medserve_monitor_log_dropped_total",
    "Prediction-log rows dropped, by reason (queue_full, write_failed).",
    ["reason"],
)
AUDIT_UNRECORDED = Counter(
    "medserve_audit_unrecorded_total",
    "Audit entries of answered requests that were not recorded (fail_open only: the queue was "
    "full, or a batch could not be written), by reason; each loss is also marked in the chain. "
    "The prediction log's drops are medserve_monitor_log_dropped_total.",
    ["stream", "reason"],
)
JOURNAL_UNWRITTEN = Counter(
    "medserve_journal_unwritten_total",
    "Records answered without being journaled first (fail_open only: the journal's disk was "
    "full or unwritable); they still reach the store unless the worker dies first.",
    ["stream"],
)
JOURNAL_REPLAYED = Counter(
    "medserve_journal_replayed_total",
    "Records replayed from the journals of stopped workers, by stream.",
    ["stream"],
)
LOG_WRITE_SECONDS = Histogram(
    "medserve_monitor_log_write_seconds",
    "Time to write one batch of prediction-log rows.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LAST_RUN = Gauge(
    "medserve_monitor_last_run_timestamp_seconds",
    "Unix time of the last monitoring (drift/performance) run, per model.",
    ["model"],
    multiprocess_mode="max",
)
DRIFT_PSI_MAX = Gauge(
    "medserve_monitor_psi_max",
    "Largest per-feature PSI in the last monitoring run, per model.",
    ["model"],
    multiprocess_mode="mostrecent",
)
ALERTS_FIRED = Counter(
    "medserve_monitor_alerts_fired_total", "Alerts fired, by model and metric.", ["model", "metric"]
)
ALERTS_OPEN = Gauge(
    "medserve_monitor_alerts_open",
    "Alerts firing and not yet acknowledged, per model (as of the last run).",
    ["model"],
    multiprocess_mode="mostrecent",
)
WEBHOOK_FAILURES = Counter(
    "medserve_monitor_webhook_failures_total", "Failed webhook delivery attempts.", ["model"]
)
EXPLAIN_SECONDS = Histogram(
    "medserve_explain_duration_seconds",
    "Time to explain one request, by model and method.",
    ["model", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

"""Tables of the monitoring capability, on the shared registry metadata (own alembic branch).

The prediction log holds de-identified inputs only (identifier fields as salted pseudonyms, free
text through Safe Harbor), stored as JSON text in the signature's feature order, packed one row
per writer batch so that logging stays cheap. References hold summaries of the registration
sample (quantiles, category frequencies), never rows.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)

from medserve.core.store.metadata import metadata

# The prediction log is packed: one row per writer batch and model version, the batch's rows as
# JSON arrays (ids, times, de-identified inputs, outputs by column). A logged prediction costs
# the writer a few list appends instead of an indexed row (see monitoring/prediction_log.py).
# A batch spans at most PACKED_SPAN_S seconds, so time windows are index range scans.
PACKED_SPAN_S = 60.0

mon_prediction_batches = Table(
    "mon_prediction_batches",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("first_at", DateTime(timezone=True), nullable=False),
    Column("last_at", DateTime(timezone=True), nullable=False),
    Column("n", Integer, nullable=False),
    Column("ids", Text, nullable=False),  # JSON [prediction id, ...]
    Column("times", Text, nullable=False),  # JSON [µs since the epoch, ...]
    Column("patients", Text, nullable=True),  # JSON [pseudonym | null, ...]; NULL: none given
    Column("sites", Text, nullable=True),  # JSON [site | null, ...]; NULL: none given
    # In signature order: a numeric matrix as .npy bytes, other inputs as JSON [[value, ...], ...]
    Column("inputs", Text, nullable=True),
    Column("inputs_npy", LargeBinary, nullable=True),
    Column("outputs", Text, nullable=False),  # JSON {output: [value per row]}
    Column("latency_ms", Text, nullable=False),  # JSON [ms, ...]
    # What arrived missing and was imputed (the inputs hold the imputed values): JSON
    # [[row of the request's first row, feature index, count], ...]; NULL: nothing was.
    Column("missing", Text, nullable=True),
    Index("ix_mon_prediction_batches_model_first", "model_name", "first_at"),
    Index("ix_mon_prediction_batches_first", "first_at"),
)

# Request ids that do not carry their own time (a caller's X-Request-ID): found by id here.
# medserve's own ids start with their time in microseconds, so they are found by time window.
mon_prediction_ids = Table(
    "mon_prediction_ids",
    metadata,
    Column("request_id", String(96), nullable=False, index=True),
    Column("batch_seq", Integer, nullable=False),
)

# Outcomes attached later (by prediction id or patient window), one per logged row.
mon_outcomes = Table(
    "mon_outcomes",
    metadata,
    Column("batch_seq", Integer, primary_key=True, autoincrement=False),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("outcome", Text, nullable=False),
    Column("outcome_at", DateTime(timezone=True), nullable=False),
)

mon_references = Table(
    "mon_references",
    metadata,
    Column("model_name", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("reference", JSON, nullable=False),
    Column("importance", JSON, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

mon_configs = Table(
    "mon_configs",
    metadata,
    Column("model_name", String(128), primary_key=True),
    Column("config", JSON, nullable=False),
    Column("updated_by", String(256), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

mon_runs = Table(
    "mon_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(128), nullable=False, index=True),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("result", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

mon_rules = Table(
    "mon_rules",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(128), nullable=False, index=True),
    Column("metric", String(192), nullable=False),
    Column("op", String(8), nullable=False),
    Column("threshold", Float, nullable=False),
    Column("min_n", Integer, nullable=False),
    Column("consecutive", Integer, nullable=False),
    Column("streak", Integer, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

mon_alerts = Table(
    "mon_alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rule_id", Integer, nullable=False, index=True),
    Column("model_name", String(128), nullable=False, index=True),
    Column("metric", String(192), nullable=False),
    Column("value", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("n", Integer, nullable=False),
    Column("run_id", Integer, nullable=True),
    Column("state", String(16), nullable=False),
    Column("delivery", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("fired_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Column("acknowledged_by", String(256), nullable=True),
    Column("acknowledged_at", DateTime(timezone=True), nullable=True),
    Column("note", Text, nullable=True),
)

__all__ = [
    "metadata",
    "mon_alerts",
    "mon_configs",
    "mon_outcomes",
    "mon_prediction_batches",
    "mon_prediction_ids",
    "mon_references",
    "mon_rules",
    "mon_runs",
]

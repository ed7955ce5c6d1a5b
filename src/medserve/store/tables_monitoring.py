"""Tables of the monitoring capability, on the shared registry metadata (own alembic branch).

The prediction log holds de-identified inputs only (identifier fields as salted pseudonyms, free
text through Safe Harbor), stored as JSON text in the signature's feature order so that a batch
insert stays cheap. References hold summaries of the registration sample (quantiles, category
frequencies), never rows.
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
    String,
    Table,
    Text,
)

from medserve.store.schema import metadata

mon_predictions = Table(
    "mon_predictions",
    metadata,
    # Callers may reuse an X-Request-ID: ids are indexed, not unique, so a batch never fails.
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(96), nullable=False, index=True),
    Column("model_name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("patient", String(64), nullable=True),
    Column("site", String(128), nullable=True),
    Column("inputs", Text, nullable=False),
    Column("outputs", Text, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("outcome", Text, nullable=True),
    Column("outcome_at", DateTime(timezone=True), nullable=True),
    Index("ix_mon_predictions_model_at", "model_name", "at"),
    Index("ix_mon_predictions_patient", "patient", "model_name"),
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
    "mon_predictions",
    "mon_references",
    "mon_rules",
    "mon_runs",
]

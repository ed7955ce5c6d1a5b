"""Monitoring: prediction log, references, per-model config, runs, alert rules and alerts.

Revision ID: 0004
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = ("monitoring",)
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "mon_predictions",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(96), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("patient", sa.String(64), nullable=True),
        sa.Column("site", sa.String(128), nullable=True),
        sa.Column("inputs", sa.Text, nullable=False),
        sa.Column("outputs", sa.Text, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("outcome", sa.Text, nullable=True),
        sa.Column("outcome_at", _TS, nullable=True),
    )
    op.create_index("ix_mon_predictions_id", "mon_predictions", ["id"])
    op.create_index("ix_mon_predictions_model_at", "mon_predictions", ["model_name", "at"])
    op.create_index("ix_mon_predictions_patient", "mon_predictions", ["patient", "model_name"])
    op.create_table(
        "mon_references",
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("reference", sa.JSON, nullable=False),
        sa.Column("importance", sa.JSON, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "mon_configs",
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("updated_by", sa.String(256), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_table(
        "mon_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("window_start", _TS, nullable=False),
        sa.Column("window_end", _TS, nullable=False),
        sa.Column("result", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_mon_runs_model_name", "mon_runs", ["model_name"])
    op.create_table(
        "mon_rules",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("metric", sa.String(192), nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("min_n", sa.Integer, nullable=False),
        sa.Column("consecutive", sa.Integer, nullable=False),
        sa.Column("streak", sa.Integer, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_mon_rules_model_name", "mon_rules", ["model_name"])
    op.create_table(
        "mon_alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rule_id", sa.Integer, nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("metric", sa.String(192), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("run_id", sa.Integer, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("delivery", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("fired_at", _TS, nullable=False),
        sa.Column("resolved_at", _TS, nullable=True),
        sa.Column("acknowledged_by", sa.String(256), nullable=True),
        sa.Column("acknowledged_at", _TS, nullable=True),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("ix_mon_alerts_rule_id", "mon_alerts", ["rule_id"])
    op.create_index("ix_mon_alerts_model_name", "mon_alerts", ["model_name"])


def downgrade() -> None:
    for table in (
        "mon_alerts",
        "mon_rules",
        "mon_runs",
        "mon_configs",
        "mon_references",
        "mon_predictions",
    ):
        op.drop_table(table)

"""Traffic splitting: canary and shadow versions behind an alias, and what shadows answered;
counters shared by a cluster's replicas (rate limits).

Revision ID: 0016
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0001"
branch_labels = ("traffic",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "traffic_routes",
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("weight", sa.Integer, nullable=False),
        sa.Column("updated_by", sa.String(256), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "traffic_shadow",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("live_version", sa.Integer, nullable=False),
        sa.Column("shadow_version", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(96), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("live_outputs", sa.Text, nullable=False),
        sa.Column("shadow_outputs", sa.Text, nullable=True),
        sa.Column("agree", sa.Float, nullable=True),
        sa.Column("live_ms", sa.Float, nullable=False),
        sa.Column("shadow_ms", sa.Float, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("failed", sa.Boolean, nullable=False),
    )
    op.create_index("ix_traffic_shadow_model_at", "traffic_shadow", ["model_name", "at"])
    # fixed-window counters shared by every replica (rate limits across a Ray deployment)
    op.create_table(
        "cluster_counters",
        sa.Column("scope", sa.String(32), primary_key=True),
        sa.Column("counter_key", sa.String(64), primary_key=True),
        sa.Column("window_ms", sa.BigInteger, primary_key=True),
        sa.Column("until_ms", sa.BigInteger, nullable=False),
        sa.Column("total", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_cluster_counters_until", "cluster_counters", ["until_ms"])


def downgrade() -> None:
    op.drop_index("ix_cluster_counters_until", "cluster_counters")
    op.drop_table("cluster_counters")
    op.drop_index("ix_traffic_shadow_model_at", "traffic_shadow")
    op.drop_table("traffic_shadow")
    op.drop_table("traffic_routes")

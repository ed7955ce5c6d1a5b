"""Interop: CDS cards issued and the feedback clinicians gave on them.

Revision ID: 0005
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0001"
branch_labels = ("interop",)
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cds_cards",
        sa.Column("uuid", sa.String(64), primary_key=True),
        sa.Column("service_id", sa.String(160), nullable=False),
        sa.Column("hook", sa.String(64), nullable=False),
        sa.Column("hook_instance", sa.String(128), nullable=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "cds_feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("card_uuid", sa.String(64), nullable=False),
        sa.Column("service_id", sa.String(160), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("override_code", sa.String(128), nullable=True),
        sa.Column("override_system", sa.String(256), nullable=True),
        sa.Column("override_display", sa.String(256), nullable=True),
        sa.Column("user_comment", sa.Text, nullable=True),
        sa.Column("accepted_suggestions", sa.Integer, nullable=False, server_default="0"),
        sa.Column("outcome_at", _TS, nullable=True),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
    )
    op.create_index("ix_cds_feedback_model", "cds_feedback", ["model_name", "version"])


def downgrade() -> None:
    op.drop_index("ix_cds_feedback_model", table_name="cds_feedback")
    op.drop_table("cds_feedback")
    op.drop_table("cds_cards")

"""Governance: evaluations, model cards, acceptance criteria, training-run records.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = ("governance",)
depends_on = None

_FK_COLUMNS = ["model_name", "version"]
_FK_TARGET = ["model_versions.model_name", "model_versions.version"]


def _version_fk() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(_FK_COLUMNS, _FK_TARGET, ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "gov_evaluations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("dataset_sha256", sa.String(64), nullable=False),
        sa.Column("dataset_name", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("result", sa.JSON, nullable=False),
        sa.Column("report_sha256", sa.String(64), nullable=True),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _version_fk(),
        sa.UniqueConstraint("model_name", "version", "dataset_sha256", name="uq_gov_evaluation"),
    )
    op.create_table(
        "gov_cards",
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("author", sa.JSON, nullable=False),
        sa.Column("updated_by", sa.String(256), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        _version_fk(),
    )
    op.create_table(
        "gov_acceptance",
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("criteria", sa.JSON, nullable=False),
        sa.Column("updated_by", sa.String(256), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        _version_fk(),
    )
    op.create_table(
        "gov_training_runs",
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("record", sa.JSON, nullable=False),
        sa.Column("spec_text", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _version_fk(),
    )


def downgrade() -> None:
    for table in ("gov_training_runs", "gov_acceptance", "gov_cards", "gov_evaluations"):
        op.drop_table(table)

"""Journal progress: how far each worker journal's records are stored, per stream.

Revision ID: 0011
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0001"
branch_labels = ("journal",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journal_progress",
        sa.Column("stream", sa.String(16), primary_key=True),
        sa.Column("journal", sa.String(64), primary_key=True),
        sa.Column("upto", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("journal_progress")

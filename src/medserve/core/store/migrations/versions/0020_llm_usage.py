"""Language-model usage per key, UTC day and model, shared by a deployment's nodes.

Revision ID: 0020
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0001"
branch_labels = ("llm_usage",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "llm_usage",
        sa.Column("key_id", sa.String(256), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("llm_usage")

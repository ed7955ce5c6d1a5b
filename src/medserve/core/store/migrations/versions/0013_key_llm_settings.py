"""Language models: a key's PHI policy, its grant to send identifiers, and its budgets.

Revision ID: 0013
Revises: 0001 (depends on 0003, which creates the keys)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0001"
branch_labels = ("llm",)
depends_on = "0003"


def upgrade() -> None:
    op.create_table(
        "sec_key_llm",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("phi_policy", sa.String(16), nullable=True),
        sa.Column("phi_allow", sa.Boolean, nullable=False),
        sa.Column("requests_per_minute", sa.Integer, nullable=True),
        sa.Column("tokens_per_minute", sa.BigInteger, nullable=True),
        sa.Column("tokens_per_day", sa.BigInteger, nullable=True),
        sa.Column("max_tokens", sa.Integer, nullable=True),
        sa.Column("max_context", sa.Integer, nullable=True),
        sa.Column("updated_by", sa.String(256), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sec_key_llm")

"""Security: audit rows sealed with a keyed HMAC name the key (``chain_key``).

Revision ID: 0009
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sec_audit") as batch:
        batch.add_column(sa.Column("chain_key", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sec_audit") as batch:
        batch.drop_column("chain_key")

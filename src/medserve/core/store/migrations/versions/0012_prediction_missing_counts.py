"""Monitoring: what arrived missing in a logged batch, before the validator imputed it.

The logged inputs are the model matrix, which holds imputed values, so the missing-value rate
could never be read from them; ``missing`` keeps, per request, how many values of each feature
arrived missing (JSON ``[[row, feature, count], ...]``; NULL when none did). Rows logged before
this revision have none recorded.

Revision ID: 0012
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mon_prediction_batches") as batch:
        batch.add_column(sa.Column("missing", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mon_prediction_batches") as batch:
        batch.drop_column("missing")

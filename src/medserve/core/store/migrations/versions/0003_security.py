"""Security: API keys, model tenants, change counter, hash-chained audit trail.

Revision ID: 0003
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = ("security",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sec_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("counter", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(
        sa.table("sec_state", sa.column("id", sa.Integer), sa.column("counter", sa.BigInteger)),
        [{"id": 1, "counter": 0}],
    )
    op.create_table(
        "sec_api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("roles", sa.JSON, nullable=False),
        sa.Column("models", sa.JSON, nullable=True),
        sa.Column("tenant", sa.String(128), nullable=True),
        sa.Column("rate_limit", sa.Integer, nullable=True),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "sec_model_tenants",
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
    )
    op.create_table(
        "sec_audit",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("client", sa.String(64), nullable=True),
        sa.Column("outcome", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("patient_hash", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_sec_audit_at", "sec_audit", ["at"])


def downgrade() -> None:
    op.drop_index("ix_sec_audit_at", "sec_audit")
    for table in ("sec_audit", "sec_model_tenants", "sec_api_keys", "sec_state"):
        op.drop_table(table)

"""Tables of the governance capability, on the shared registry metadata (own alembic branch).

Evaluations are keyed by (model, version, dataset fingerprint): the same version evaluated on the
same data replaces its row, on other data adds one. Cards hold only what an author states; the
quantitative parts are derived from evaluations each time a card is built, never typed.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from medserve.core.store.metadata import metadata

_VERSION_FK = (["model_name", "version"], ["model_versions.model_name", "model_versions.version"])

gov_evaluations = Table(
    "gov_evaluations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("dataset_sha256", String(64), nullable=False),
    Column("dataset_name", String(512), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("result", JSON, nullable=False),
    Column("report_sha256", String(64), nullable=True),
    Column("created_by", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(*_VERSION_FK, ondelete="CASCADE"),
    UniqueConstraint("model_name", "version", "dataset_sha256", name="uq_gov_evaluation"),
)

gov_cards = Table(
    "gov_cards",
    metadata,
    Column("model_name", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("author", JSON, nullable=False),
    Column("updated_by", String(256), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(*_VERSION_FK, ondelete="CASCADE"),
)

gov_acceptance = Table(
    "gov_acceptance",
    metadata,
    Column("model_name", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("criteria", JSON, nullable=False),
    Column("updated_by", String(256), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(*_VERSION_FK, ondelete="CASCADE"),
)

gov_training_runs = Table(
    "gov_training_runs",
    metadata,
    Column("model_name", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("record", JSON, nullable=False),
    Column("spec_text", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(*_VERSION_FK, ondelete="CASCADE"),
)

__all__ = ["gov_acceptance", "gov_cards", "gov_evaluations", "gov_training_runs", "metadata"]

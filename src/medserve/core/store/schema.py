"""Table definitions (SQLAlchemy Core). Changes go through an alembic migration, never in place."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    String,
    Table,
    Text,
)

# Each capability defines its tables on ``metadata`` in its own module, migrated by its own alembic
# branch (down_revision "0001"); importing them here keeps ``metadata`` the whole schema.
from medserve.core.store import (
    tables_console,
    tables_governance,
    tables_interop,
    tables_llm,
    tables_monitoring,
    tables_privacy,
    tables_security,
    tables_traffic,
)
from medserve.core.store.metadata import metadata

registered_models = Table(
    "registered_models",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("description", Text, nullable=False, default=""),
    Column("tags", JSON, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("last_version", Integer, nullable=False, default=0),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column(
        "model_name",
        String(128),
        ForeignKey("registered_models.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("version", Integer, primary_key=True),
    Column("artifact_sha256", String(64), nullable=False),
    Column("artifact_filename", String(512), nullable=False),
    Column("flavor", String(32), nullable=False),
    Column("runtime", String(64), nullable=False),
    Column("runtime_reason", Text, nullable=False),
    Column("source_flavor", String(64), nullable=False),
    Column("source_artifact_sha256", String(64), nullable=True),
    Column("library_versions", JSON, nullable=False),
    Column("signature", JSON, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("serving_config", JSON, nullable=False),
    Column("description", Text, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

aliases = Table(
    "aliases",
    metadata,
    Column("model_name", String(128), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    ForeignKeyConstraint(
        ["model_name", "version"],
        ["model_versions.model_name", "model_versions.version"],
        ondelete="CASCADE",
    ),
)

alias_events = Table(
    "alias_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "model_name",
        String(128),
        ForeignKey("registered_models.name", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("alias", String(64), nullable=False),
    Column("from_version", Integer, nullable=True),
    Column("to_version", Integer, nullable=True),
    Column("actor", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)

registry_state = Table(
    "registry_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("counter", BigInteger, nullable=False),
)

# The outbox: one row per registry change, written in the change's own transaction, so the audit
# entry of a change cannot be lost between a commit and a handler. The audit writer consumes it
# (moves each row into the hash chain and deletes it, in one transaction).
registry_outbox = Table(
    "registry_outbox",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("version", Integer, nullable=True),
    Column("alias", String(64), nullable=True),
    Column("from_version", Integer, nullable=True),
    Column("actor", String(256), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("at", DateTime(timezone=True), nullable=False),
)


# How far each worker journal's records are stored, per stream (``audit``, ``log``), written in the
# writer's own transaction so a replay after a crash stores nothing twice (``core.journal``).
journal_progress = Table(
    "journal_progress",
    metadata,
    Column("stream", String(16), primary_key=True),
    Column("journal", String(64), primary_key=True),
    Column("upto", BigInteger, nullable=False),
)

__all__ = [
    "metadata",
    "tables_console",
    "tables_governance",
    "tables_interop",
    "tables_llm",
    "tables_monitoring",
    "tables_privacy",
    "tables_security",
    "tables_traffic",
]

"""Tables of the interop capability, on the shared registry metadata (own alembic branch).

``cds_cards`` records every CDS card issued (no patient data: the card id, the service, the
model version and the risk indicator), so that feedback can be tied to the version that
produced the card. ``cds_feedback`` holds what the clinician did with it; the free-text
override comment is stored only after Safe Harbor de-identification.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, String, Table, Text

from medserve.core.store.metadata import metadata

cds_cards = Table(
    "cds_cards",
    metadata,
    Column("uuid", String(64), primary_key=True),
    Column("service_id", String(160), nullable=False),
    Column("hook", String(64), nullable=False),
    Column("hook_instance", String(128), nullable=True),
    Column("model_name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("indicator", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

cds_feedback = Table(
    "cds_feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("card_uuid", String(64), nullable=False),
    Column("service_id", String(160), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),  # accepted | overridden
    Column("override_code", String(128), nullable=True),
    Column("override_system", String(256), nullable=True),
    Column("override_display", String(256), nullable=True),
    Column("user_comment", Text, nullable=True),  # de-identified
    Column("accepted_suggestions", Integer, nullable=False, server_default="0"),
    Column("outcome_at", DateTime(timezone=True), nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("actor", String(256), nullable=False),
    Index("ix_cds_feedback_model", "model_name", "version"),
)

__all__ = ["cds_cards", "cds_feedback", "metadata"]

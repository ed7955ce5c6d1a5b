"""Tables of the privacy capability, on the shared registry metadata (own alembic branch).

``patient_keys`` holds one random key per patient pseudonym. What the audit trail stores about a
patient is an HMAC of the pseudonym under that key (``medserve.core.patients``), never the
pseudonym itself: deleting the key (crypto-shredding, at erasure) makes every such reference in
the hash-chained trail unlinkable without rewriting a single chained row.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, LargeBinary, String, Table

from medserve.core.store.metadata import metadata

patient_keys = Table(
    "patient_keys",
    metadata,
    Column("pseudonym", String(64), primary_key=True),  # pseudonymize(patient id, home salt)
    Column("key", LargeBinary(32), nullable=False),  # 32 random bytes
    Column("created_at", DateTime(timezone=True), nullable=False),
)

__all__ = ["metadata", "patient_keys"]

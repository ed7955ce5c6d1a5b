"""Tables of the web console (``/ui``), on the shared registry metadata (own alembic branch).

``console_sessions`` holds one row per signed-in browser: the SHA-256 of the session token (the
cookie's value; the token itself is never stored, nor the API key it was opened with), the key
it acts as, and when it ends. Every worker reads the same rows, so a session works on all of
them; a key revoked or expired ends its sessions at their next request.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, String, Table

from medserve.core.store.metadata import metadata

console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("key_id", String(32), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

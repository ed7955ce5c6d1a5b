"""The outbox: the audit record of a registry or governance change, written in the change's own
transaction (so it cannot be lost between a commit and a handler). The audit writer moves the rows
into the hash chain (``AuditLog.drain_outbox``)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.engine import Connection

from medserve.core.store.schema import registry_outbox


def record_change(
    conn: Connection,
    kind: str,
    model_name: str,
    *,
    actor: str,
    version: int | None = None,
    alias: str | None = None,
    from_version: int | None = None,
    reason: str = "",
) -> None:
    """The change's audit record, in the change's transaction (consumed by the audit writer)."""
    conn.execute(
        registry_outbox.insert().values(
            kind=kind,
            model_name=model_name,
            version=version,
            alias=alias,
            from_version=from_version,
            actor=actor,
            reason=reason,
            at=datetime.now(UTC),
        )
    )

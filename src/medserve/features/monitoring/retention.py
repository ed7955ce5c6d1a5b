"""Retention of the prediction log: a model's ``retention_days`` (monitoring config) bounds how
long its logged predictions, their by-id index and their outcomes are kept.

The purge runs with every monitoring run (``runner.run_model``, which the server's schedule
calls per model every ``MEDSERVE_MONITOR_SCHEDULE_INTERVAL_S``) and on demand
(``medserve monitor purge``). Each purge that removes anything is audited in its own
transaction (``monitoring.retention_purge``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from medserve.core.store.monitoring import MonitoringStore, Purged

SYSTEM_ACTOR = "medserve"


def purge_expired(
    store: MonitoringStore, model: str, *, actor: str = SYSTEM_ACTOR, now: datetime | None = None
) -> Purged | None:
    """Purge ``model``'s log rows older than its retention period; ``None`` when the model has
    no ``retention_days`` (nothing is purged)."""
    days = store.config(model).retention_days
    if days is None:
        return None
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    return store.purge_before(model, cutoff, actor=actor, why=f"retention {days} days")

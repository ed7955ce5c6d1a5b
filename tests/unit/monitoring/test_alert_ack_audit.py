"""Acknowledging an alert is audited (issue 6): one chained entry, in the same transaction."""

from __future__ import annotations

from tests.support import fire_alert_in

from medserve.core.audit import AuditLog
from medserve.core.registry.service import Registry
from medserve.core.store.monitoring import MonitoringStore

MODEL = "breast-cancer"


def _fire(store: MonitoringStore) -> int:
    return fire_alert_in(store, MODEL)


def test_acknowledgement_writes_a_chained_audit_entry(bc_registry: Registry) -> None:
    store = MonitoringStore(bc_registry.store)
    audit = AuditLog(store.engine)
    before = list(audit.entries())
    alert_id = _fire(store)

    acked = store.acknowledge(
        alert_id, "key:owner", "patient MRN-4411 re-checked", key_id="abc123", request_id="r-1"
    )

    assert acked["state"] == "acknowledged"
    entries = list(audit.entries())[len(before) :]
    assert len(entries) == 1
    entry = entries[0]
    assert entry["action"] == "alert_acknowledge"
    assert entry["actor"] == "key:owner"
    assert entry["key_id"] == "abc123"
    assert entry["model"] == MODEL
    assert entry["request_id"] == "r-1"
    assert str(alert_id) in entry["detail"]
    assert "MRN-4411" not in entry["detail"]  # the free-text note is not copied
    assert audit.verify().ok


def test_acknowledgement_without_audit_trail(bc_registry: Registry) -> None:
    store = MonitoringStore(bc_registry.store)
    audit = AuditLog(store.engine)
    alert_id = _fire(store)
    before = len(list(audit.entries()))
    store.acknowledge(alert_id, "cli:someone", audit=False)
    assert len(list(audit.entries())) == before

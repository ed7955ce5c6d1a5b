"""Fail closed: while the audit trail or the prediction log cannot be written (the database down
or its disk full), predictions answer 503 and readiness 503; what was already answered is kept
and written once the store recovers, so nothing acknowledged goes unrecorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from tests.support import wait_for
from tests.unit.serving.inprocess_app import MODEL, create_key, records, registry_at, serve

from medserve.core.audit import AuditLog, load_audit_keys
from medserve.core.context import stored_request_id
from medserve.core.phi import load_or_create_salt
from medserve.core.store.monitoring import MonitoringStore
from medserve.serving.extensions.monitoring import PREDICTION_LOG
from medserve.serving.extensions.security import AUDIT_LOG

RIDS = ("before", "during", "after")


def _disk_full(*_: Any, **__: Any) -> None:
    raise sa.exc.OperationalError("INSERT ...", {}, OSError(28, "No space left on device"))


@pytest.mark.parametrize("broken", ["audit", "log"])
def test_an_unwritable_trail_refuses_predictions_until_it_recovers(
    home: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    monkeypatch.delenv("MEDSERVE_AUDIT_FAILURE", raising=False)  # fail_closed, the default
    headers = create_key(home, ["admin"])
    path = f"/v1/models/{MODEL}/predict"
    body = {"instances": records(1)}
    with serve(home, security=True) as (client, resources):
        audit = resources.get(AUDIT_LOG)
        log = resources.get(PREDICTION_LOG)
        target: Any = audit if broken == "audit" else log
        method = "append" if broken == "audit" else "write_packs"
        with monkeypatch.context() as patched:
            patched.setattr(target, method, _disk_full)
            before = client.post(path, json=body, headers={**headers, "X-Request-ID": "before"})
            assert before.status_code == 200  # queued; the writer finds the store full
            wait_for(lambda: target.failure is not None, timeout_s=30, what="the failed write")
            refused = client.post(path, json=body, headers={**headers, "X-Request-ID": "during"})
            assert refused.status_code == 503
            assert refused.json()["code"] == "audit_unavailable"
            assert "cannot be written" in refused.json()["error"]
            assert client.get("/v2/health/ready").status_code == 503
        wait_for(lambda: target.failure is None, timeout_s=30, what="the store to recover")
        assert client.get("/v2/health/ready").status_code == 200
        after = client.post(path, json=body, headers={**headers, "X-Request-ID": "after"})
        assert after.status_code == 200
    with registry_at(home) as registry:
        engine = registry.store.engine  # type: ignore[attr-defined]
        trail = AuditLog(engine, keys=load_audit_keys(home))
        assert trail.verify().ok
        audited = {e["request_id"]: e["outcome"] for e in trail.entries()}
        logged = {i.split("-")[0] for i in MonitoringStore(engine).prediction_ids(MODEL)}
    salt = load_or_create_salt(home)  # a caller's X-Request-ID is stored keyed
    audited = {rid: audited.get(stored_request_id(rid, None, salt)) for rid in RIDS}
    logged = {rid for rid in RIDS if stored_request_id(rid, None, salt) in logged}
    # the prediction answered before the failure is in both; the refused one is audited as 503
    assert audited["before"] == 200
    assert audited["during"] == 503
    assert audited["after"] == 200
    assert {"before", "after"} <= logged
    assert "during" not in logged

"""A full disk under the journal: fail closed (the default) answers 503 and readiness 503 until
the disk has room, answering nothing it could not journal; fail open keeps serving, counts every
request it answered unjournaled in /metrics and marks them in the audit chain."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from tests.support import wait_for
from tests.unit.serving.inprocess_app import MODEL, create_key, records, registry_at, serve

from medserve.core import journal as journal_module
from medserve.core.audit import AuditLog, load_audit_keys
from medserve.core.context import stored_request_id
from medserve.core.phi import load_or_create_salt
from medserve.core.store.monitoring import MonitoringStore
from medserve.serving.extensions.security import AUDIT_LOG

PATH = f"/v1/models/{MODEL}/predict"


def _no_space(fd: int, data: bytes) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


def _trail(home: Path) -> tuple[dict[str, int], list[dict[str, object]], set[str], bool]:
    """What the home holds afterwards: outcome by stored request id, markers, logged ids, ok."""
    with registry_at(home) as registry:
        engine = registry.store.engine  # type: ignore[attr-defined]
        trail = AuditLog(engine, keys=load_audit_keys(home))
        entries = list(trail.entries())
        ok = trail.verify().ok
        logged = {i.rpartition("-")[0] for i in MonitoringStore(engine).prediction_ids(MODEL)}
    outcomes = {str(e["request_id"]): int(e["outcome"]) for e in entries if e["request_id"]}
    markers = [e for e in entries if e["actor"] == "medserve"]
    return outcomes, markers, logged, ok


def test_a_full_journal_disk_refuses_until_it_has_room(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDSERVE_AUDIT_FAILURE", raising=False)  # fail_closed, the default
    headers = create_key(home, ["admin"])
    body = {"instances": records(1)}
    with serve(home, security=True) as (client, resources):
        audit = resources.get(AUDIT_LOG)
        before = client.post(PATH, json=body, headers={**headers, "X-Request-ID": "before"})
        assert before.status_code == 200
        with monkeypatch.context() as full:
            full.setattr(journal_module, "_write", _no_space)
            refused = client.post(PATH, json=body, headers={**headers, "X-Request-ID": "during"})
            assert refused.status_code == 503
            assert refused.json()["code"] in {"journal_unavailable", "audit_unavailable"}
            assert "journal cannot be written (ENOSPC)" in refused.json()["error"]
            assert client.get("/v2/health/ready").status_code == 503
            again = client.post(PATH, json=body, headers={**headers, "X-Request-ID": "again"})
            assert again.status_code == 503
        # room again: the writer's probe notices within an interval, serving resumes
        wait_for(lambda: audit.failure is None, timeout_s=30, what="the journal to recover")
        wait_for(
            lambda: client.get("/v2/health/ready").status_code == 200,
            timeout_s=30,
            what="readiness to recover",
        )
        after = client.post(PATH, json=body, headers={**headers, "X-Request-ID": "after"})
        assert after.status_code == 200
    outcomes, _, logged, ok = _trail(home)
    salt = load_or_create_salt(home)

    def stored(rid: str) -> str:
        return stored_request_id(rid, None, salt)

    assert ok
    assert outcomes[stored("before")] == 200
    assert outcomes[stored("after")] == 200
    assert outcomes.get(stored("during"), 503) == 503  # never a 200 that was not journaled
    assert {stored("before"), stored("after")} <= logged
    assert stored("during") not in logged


def test_fail_open_counts_and_marks_what_it_answered_unjournaled(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSERVE_AUDIT_FAILURE", "fail_open")
    headers = create_key(home, ["admin"])
    body = {"instances": records(1)}
    with serve(home, security=True) as (client, _):
        with monkeypatch.context() as full:
            full.setattr(journal_module, "_write", _no_space)
            for i in range(3):
                answer = client.post(PATH, json=body, headers={**headers, "X-Request-ID": f"o{i}"})
                assert answer.status_code == 200  # fail open: served
            assert client.get("/v2/health/ready").status_code == 200
        metrics = client.get("/metrics", headers=headers).text
    assert 'medserve_journal_unwritten_total{stream="audit"} 3.0' in metrics
    assert 'medserve_journal_unwritten_total{stream="log"} 3.0' in metrics
    outcomes, markers, logged, ok = _trail(home)
    assert ok
    salt = load_or_create_salt(home)
    sent = {stored_request_id(f"o{i}", None, salt) for i in range(3)}
    assert sent <= set(outcomes)  # still stored: only the crash protection was missing
    assert sent <= logged
    skipped = [m for m in markers if m["action"] == "journal_skipped"]
    assert len(skipped) == 1
    assert str(skipped[0]["detail"]).startswith("3 audit entries")

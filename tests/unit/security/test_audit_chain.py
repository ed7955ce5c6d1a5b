"""The hash-chained audit trail: verify, tamper detection (edit/delete/reorder), the writer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from medserve.core import metrics
from medserve.core.audit import AuditEntry, AuditLog
from medserve.core.errors import AuditUnavailableError
from medserve.core.registry.service import Registry
from medserve.core.store.tables_security import sec_audit
from medserve.faces.cli import app


@pytest.fixture
def audit(registry: Registry) -> AuditLog:
    log = AuditLog(registry.store.engine)  # type: ignore[attr-defined]
    log.append(
        [
            AuditEntry(actor=f"key:user{i}", action="predict", outcome=200, model="m", version="1")
            for i in range(10)
        ]
    )
    return log


def _run(sql: str, audit: AuditLog) -> None:
    with audit.engine.begin() as conn:
        conn.exec_driver_sql(sql)


def test_intact_chain_verifies(audit: AuditLog) -> None:
    result = audit.verify()
    assert result.ok
    assert result.checked == 10


def test_edited_row_is_located(audit: AuditLog) -> None:
    _run("UPDATE sec_audit SET outcome = 403 WHERE seq = 4", audit)
    result = audit.verify()
    assert not result.ok
    assert result.first_bad_seq == 4
    assert "modified" in result.reason


def test_deleted_row_is_located(audit: AuditLog) -> None:
    _run("DELETE FROM sec_audit WHERE seq = 6", audit)
    result = audit.verify()
    assert not result.ok
    assert result.first_bad_seq == 6
    assert "missing" in result.reason


def test_deleted_and_renumbered_rows_are_located(audit: AuditLog) -> None:
    # A careful forger closes the gap: the link to the previous hash still breaks.
    _run("DELETE FROM sec_audit WHERE seq = 6", audit)
    _run("UPDATE sec_audit SET seq = seq - 1 WHERE seq > 6", audit)
    result = audit.verify()
    assert not result.ok
    assert result.first_bad_seq == 6


def test_reordered_rows_are_located(audit: AuditLog) -> None:
    _run("UPDATE sec_audit SET seq = -3 WHERE seq = 3", audit)
    _run("UPDATE sec_audit SET seq = 3 WHERE seq = 7", audit)
    _run("UPDATE sec_audit SET seq = 7 WHERE seq = -3", audit)
    result = audit.verify()
    assert not result.ok
    assert result.first_bad_seq == 3


def test_appends_continue_the_chain_across_logs(audit: AuditLog, registry: Registry) -> None:
    other = AuditLog(registry.store.engine)  # type: ignore[attr-defined]
    other.append([AuditEntry(actor="cli:x", action="key_revoke", outcome=200)])
    assert audit.verify().checked == 11
    assert audit.verify().ok


def test_writer_drains_queue_on_close(registry: Registry) -> None:
    log = AuditLog(registry.store.engine)  # type: ignore[attr-defined]
    log.start()
    for i in range(5000):
        log.enqueue(AuditEntry(actor="key:app", action="predict", outcome=200, request_id=str(i)))
    log.close()
    rows = list(log.entries())
    assert len(rows) == 5000
    assert [r["request_id"] for r in rows] == [str(i) for i in range(5000)]
    assert log.verify().ok


def test_overflow_is_recorded_in_the_chain_when_failing_open(registry: Registry) -> None:
    log = AuditLog(registry.store.engine, queue_size=3, fail_open=True)  # type: ignore[attr-defined]
    counted = metrics.AUDIT_UNRECORDED.labels("audit", "queue_full")
    before = counted._value.get()
    for _ in range(5):
        log.enqueue(AuditEntry(actor="key:app", action="predict", outcome=200))
    log.start()
    log.close()
    rows = list(log.entries())
    assert [r["action"] for r in rows] == ["predict"] * 3 + ["audit_overflow"]
    assert "2 audit entries of answered requests were lost" in rows[-1]["detail"]
    assert "fail_open" in rows[-1]["detail"]
    assert counted._value.get() == before + 2  # and counted in /metrics
    verified = CliRunner().invoke(app, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output
    assert "recorded loss at entry 4 (audit_overflow): 2 audit entries" in verified.output


def test_a_full_queue_refuses_when_failing_closed(registry: Registry) -> None:
    log = AuditLog(registry.store.engine, queue_size=3)  # type: ignore[attr-defined]
    for _ in range(3):
        log.enqueue(AuditEntry(actor="key:app", action="predict", outcome=200))
    with pytest.raises(AuditUnavailableError, match="queue is full"):
        log.enqueue(AuditEntry(actor="key:app", action="predict", outcome=200))
    log.start()
    log.close()
    assert [r["action"] for r in log.entries()] == ["predict"] * 3  # no loss to mark


def test_entries_filters(audit: AuditLog) -> None:
    assert len(list(audit.entries(actor="key:user3"))) == 1
    assert len(list(audit.entries(after_seq=8))) == 2
    future = datetime.now(UTC) + timedelta(hours=1)
    assert list(audit.entries(since=future)) == []
    assert len(list(audit.entries(since=datetime.now(UTC) - timedelta(hours=1)))) == 10


def test_cli_verify_and_export(audit: AuditLog) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify"])
    assert ok.exit_code == 0, ok.output
    # the 10 entries from before keys, then the CLI's marker sealed with the home's audit key
    assert "11 entries verified" in ok.output
    exported = runner.invoke(app, ["audit", "export", "--since", "1d"])
    assert exported.exit_code == 0
    lines = exported.stdout.strip().splitlines()
    assert len(lines) == 11
    assert '"action":"audit_key_in_use"' in lines[-1]
    with audit.engine.begin() as conn:
        conn.execute(sa.update(sec_audit).where(sec_audit.c.seq == 2).values(actor="key:nobody"))
    broken = runner.invoke(app, ["audit", "verify"])
    assert broken.exit_code == 1
    assert "entry 2" in broken.output


def _packed_record(i: int, at: str) -> list[object]:
    actor = "key:a" if i % 2 else "key:b"
    model = "m1" if i < 6 else "m2"
    return [at, actor, "kid", "predict", model, "1", "127.0.0.1", 200, f"r{i}", None, "v2 rows=1"]


def test_packed_prediction_entries_read_back_one_by_one(registry: Registry) -> None:
    log = AuditLog(registry.store.engine)  # type: ignore[attr-defined]
    log.append([AuditEntry(actor="cli:x", action="key_create", outcome=200)])
    for i in range(10):
        log.enqueue_packed(_packed_record, i)
    log.enqueue(AuditEntry(actor="key:a", action="predict", outcome=422, request_id="bad"))
    log.start()
    log.close()
    rows = list(log.entries())
    assert [r["request_id"] for r in rows] == [None, *[f"r{i}" for i in range(10)], "bad"]
    assert len({r["seq"] for r in rows}) == 3  # one row before, one packed row, one after
    assert {r["action"] for r in rows[1:11]} == {"predict"}
    assert [r["request_id"] for r in log.entries(actor="key:a")] == [
        "r1",
        "r3",
        "r5",
        "r7",
        "r9",
        "bad",
    ]
    assert [r["request_id"] for r in log.entries(model="m2")] == ["r6", "r7", "r8", "r9"]
    packed_seq = rows[1]["seq"]
    after = list(log.entries(after_seq=packed_seq))
    assert [r["request_id"] for r in after] == ["bad"]
    page = list(log.entries(limit=2))  # a packed row comes whole, so paging by seq is exact
    assert [r["request_id"] for r in page][-1] == "r9"
    assert log.verify().ok


def test_tampering_inside_a_packed_row_is_detected(registry: Registry) -> None:
    log = AuditLog(registry.store.engine)  # type: ignore[attr-defined]
    for i in range(4):
        log.enqueue_packed(_packed_record, i)
    log.start()
    log.close()
    assert log.verify().ok
    with log.engine.begin() as conn:
        conn.execute(
            sa.update(sec_audit)
            .where(sec_audit.c.action == "predict_batch")
            .values(detail=sa.func.replace(sec_audit.c.detail, '"r2"', '"r2-forged"'))
        )
    result = log.verify()
    assert not result.ok
    assert result.first_bad_seq == 1
    assert "modified" in result.reason

"""The write-ahead journal: records survive their worker, are replayed once, and a journal that
cannot be written refuses (fail closed) instead of losing what it is given."""

from __future__ import annotations

import errno
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import sqlalchemy as sa

from medserve.core import journal as journal_module
from medserve.core.audit import AuditEntry, AuditLog
from medserve.core.context import RequestContext
from medserve.core.errors import StoreError
from medserve.core.events import PredictionEvent
from medserve.core.journal import (
    Journal,
    JournalError,
    Orphan,
    progress_of,
    record_progress,
    replay_orphans,
    scrub,
)
from medserve.core.monitoring_config import MonitoringSettings
from medserve.core.prediction_log import PredictionLog
from medserve.core.registry.service import Registry
from medserve.core.store.monitoring import MonitoringStore
from medserve.core.store.schema import journal_progress


def _die(journal: Journal) -> None:
    """What kill -9 leaves: the files as they are, the lock released by the kernel."""
    os.close(journal._fd)
    os.close(journal._lock_fd)


def _engine(registry: Registry) -> sa.Engine:
    return registry.store.engine  # type: ignore[attr-defined,no-any-return]


def _replay(directory: Path, stream: str, engine: sa.Engine) -> list[Orphan]:
    seen: list[Orphan] = []
    replay_orphans(directory, stream, engine, lambda conn, orphan: seen.append(orphan))
    return seen


def test_a_dead_workers_records_past_its_progress_are_replayed_once(
    tmp_path: Path, registry: Registry
) -> None:
    engine = _engine(registry)
    journal = Journal(tmp_path, "audit")
    for i in range(5):
        assert journal.append(orjson.dumps({"n": i})) == i + 1
    with engine.begin() as conn:
        record_progress(conn, "audit", journal.id, 2)  # the writer stored 1-2 before dying
    _die(journal)
    [orphan] = _replay(tmp_path, "audit", engine)
    assert [seq for seq, _ in orphan.records] == [3, 4, 5]
    assert [orjson.loads(p)["n"] for _, p in orphan.records] == [2, 3, 4]
    assert orphan.corrupt_bytes == 0
    assert list((tmp_path / "audit").iterdir()) == []  # segments and lock removed
    with engine.connect() as conn:
        assert conn.execute(sa.select(journal_progress)).all() == []
    assert _replay(tmp_path, "audit", engine) == []  # nothing twice


def test_a_live_workers_journal_is_left_alone(tmp_path: Path, registry: Registry) -> None:
    journal = Journal(tmp_path, "log")
    journal.append(b"[1]")
    engine = _engine(registry)
    assert _replay(tmp_path, "log", engine) == []  # its worker holds it
    assert journal.seq == 1
    journal.close(complete=False)  # a clean stop with records unstored: kept for replay
    [orphan] = _replay(tmp_path, "log", engine)
    assert orphan.records == [(1, b"[1]")]


def test_a_torn_or_damaged_record_is_counted_not_guessed(
    tmp_path: Path, registry: Registry
) -> None:
    journal = Journal(tmp_path, "audit")
    for i in range(3):
        journal.append(orjson.dumps([i]))
    path = journal._path
    _die(journal)
    data = bytearray(path.read_bytes())
    second = data.index(b"\n") + 1
    data[second + 12] ^= 0x01  # a flipped bit in the second record's payload
    path.write_bytes(bytes(data) + b"4 0000")  # and a torn record at the end (a power cut)
    [orphan] = _replay(tmp_path, "audit", _engine(registry))
    assert [seq for seq, _ in orphan.records] == [1, 3]
    assert orphan.corrupt_bytes > len(b"4 0000")


def test_a_full_disk_refuses_whole_records_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path, "audit")
    journal.append(b"[0]")
    size = journal._path.stat().st_size

    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:  # the disk fills mid-record
        return real_write(fd, data[:5])

    monkeypatch.setattr(journal_module, "_write", short_write)
    with pytest.raises(JournalError, match="ENOSPC") as raised:
        journal.append(b"[1]")
    assert isinstance(raised.value, StoreError)  # a 503 under fail closed
    assert journal.failure is not None
    assert journal._path.stat().st_size == size  # the torn part was taken back

    def no_space(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module, "_write", no_space)
    with pytest.raises(JournalError):
        journal.append(b"[1]")
    assert not journal.probe()  # still full
    monkeypatch.setattr(journal_module, "_write", real_write)
    assert journal.probe()
    assert journal.failure is None
    assert journal.append(b"[1]") == 2


def test_stored_records_do_not_linger_on_disk(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "log", segment_bytes=64)
    for i in range(10):
        journal.append(orjson.dumps({"record": i, "pad": "x" * 20}))
    segments = sorted((tmp_path / "log").glob("*.jnl"))
    assert len(segments) > 2  # rolled at 64 bytes
    journal.stored(4)
    assert len(sorted((tmp_path / "log").glob("*.jnl"))) < len(segments)
    journal.stored(10)  # everything: the open segment is emptied too
    assert sum(p.stat().st_size for p in (tmp_path / "log").glob("*.jnl")) == 0
    journal.close(complete=True)
    assert list((tmp_path / "log").iterdir()) == []


def test_scrub_removes_a_pseudonyms_records_from_stopped_workers(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "log")
    journal.append(b'["m",1,"pid_aaa"]')
    journal.append(b'["m",1,"pid_bbb"]')
    _die(journal)
    assert scrub(tmp_path, lambda line: b"pid_aaa" in line) == 1
    text = b"".join(p.read_bytes() for p in (tmp_path / "log").glob("*.jnl"))
    assert b"pid_aaa" not in text
    assert b"pid_bbb" in text


# -- the audit trail and the prediction log over their journals ------------------------------


def _record(argument: Any, at: str) -> list[Any]:
    return [at, "key:app", "k1", "predict", "risk", "1", "127.0.0.1", 200, argument, None, "v2"]


def test_audit_entries_of_a_killed_worker_reach_the_chain_once(
    tmp_path: Path, registry: Registry
) -> None:
    engine = _engine(registry)
    first = AuditLog(engine, journal=Journal(tmp_path, "audit"))
    for i in range(3):
        first.enqueue_packed(_record, f"req-{i}")
    first.start()
    first._stop_writer()  # 0-2 stored, with the journal's progress; then no writer runs
    for i in range(3, 7):
        first.enqueue_packed(_record, f"req-{i}")  # answered, then the worker is killed
    first.enqueue(AuditEntry(actor="key:app", action="read_models", outcome=200))
    assert first.journal is not None
    _die(first.journal)
    second = AuditLog(engine, journal=Journal(tmp_path, "audit"))
    assert second.replay() == 5
    assert second.replay() == 0
    entries = list(second.entries())
    ids = [e["request_id"] for e in entries if e["action"] == "predict"]
    assert ids == [f"req-{i}" for i in range(7)]  # each exactly once, in order
    actions = [e["action"] for e in entries]
    assert actions.count("audit_replayed") == 1
    assert actions[-1] == "read_models"
    assert second.verify().ok


def test_a_damaged_audit_journal_leaves_a_gap_marker(tmp_path: Path, registry: Registry) -> None:
    engine = _engine(registry)
    first = AuditLog(engine, journal=Journal(tmp_path, "audit"))
    first.enqueue_packed(_record, "req-0")
    assert first.journal is not None
    path = first.journal._path
    _die(first.journal)
    path.write_bytes(path.read_bytes() + b"2 deadbeef [torn")
    second = AuditLog(engine, journal=Journal(tmp_path, "audit"))
    second.replay()
    gaps = [e for e in second.entries() if e["action"] == "audit_gap"]
    assert len(gaps) == 1
    assert "unreadable bytes" in gaps[0]["detail"]
    result = second.verify()
    assert result.ok  # the loss is recorded, and the chain is whole
    assert [action for _, action, _ in result.gaps] == ["audit_gap"]  # and verify reports it


def _event(request_id: str, patient: str | None = None) -> PredictionEvent:
    X = np.array([[61.0, 1.2]])
    outputs = {"label": np.array([1]), "probabilities": np.array([[0.2, 0.8]])}
    context = RequestContext(request_id=request_id, patient_id=patient, id_time_us=None)
    return PredictionEvent(context, "risk", 1, ["age", "creatinine"], X, outputs, 0.001)


def test_prediction_log_rows_of_a_killed_worker_are_replayed_once(
    tmp_path: Path, registry: Registry
) -> None:
    engine = _engine(registry)
    settings = MonitoringSettings(flush_interval_s=3600)  # the writer never runs on its own
    first = PredictionLog(
        engine,
        settings,
        salt=b"s" * 32,
        signature_of=lambda m, v: None,
        journal=Journal(tmp_path, "log"),
    )
    first.on_prediction(_event("a", patient="MRN-1"))
    first.flush()
    first.on_prediction(_event("b"))
    first.on_prediction(_event("c"))
    assert first.journal is not None
    with engine.connect() as conn:
        assert progress_of(conn, "log", first.journal.id) == 1
    _die(first.journal)
    raw = b"".join(p.read_bytes() for p in (tmp_path / "log").glob("*.jnl"))
    assert b"MRN-1" not in raw  # journaled de-identified
    second = PredictionLog(
        engine,
        settings,
        salt=b"s" * 32,
        signature_of=lambda m, v: None,
        journal=Journal(tmp_path, "log"),
    )
    second._replay_quietly()
    second.close()
    ids = MonitoringStore(engine).prediction_ids("risk")
    assert len(ids) == 3
    assert len(set(ids)) == 3
    everything = (datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(hours=1))
    got = {p.id: p for p in MonitoringStore(engine).predictions("risk", *everything)}
    assert all(p.inputs == [61.0, 1.2] for p in got.values())

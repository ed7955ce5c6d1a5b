"""A patient's erasure through the served app (security on) and through ``medserve erase``:
real predictions sent with ``X-Patient-ID`` for patients A, B and C, outcomes for each; A is
erased; then nothing in the database, the home's files or the application log names A, the
others' predictions and outcomes are unchanged, the erasure's audit entries name no one, and
``medserve audit verify`` passes. Only admins may erase; a bad body is a 400 naming the field.

The audit trail keeps A's per-patient reference (``PatientKeys``), never the global pseudonym:
once A's key is destroyed nothing in the trail can be linked to A, and the chain still verifies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient
from tests.unit.serving.inprocess_app import (
    MODEL,
    copy_home,
    create_key,
    make_template,
    records,
    registry_at,
    serve,
)
from typer.testing import CliRunner

from medserve.core.audit import AuditLog, load_audit_keys
from medserve.core.erasure import ERASED_ACTION, pseudonyms_of
from medserve.core.patients import PatientKeys
from medserve.core.phi import load_or_create_salt, pseudonymize
from medserve.core.store.monitoring import MonitoringStore
from medserve.core.store.schema import metadata
from medserve.core.store.tables_security import sec_audit
from medserve.faces.cli import app as cli
from medserve.serving.extensions.monitoring import PREDICTION_LOG

A, B, C = "MRN-ERASE-A-4417", "MRN-KEEP-B-2002", "MRN-KEEP-C-3003"
WIDE = (datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(hours=1))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template(tmp_path_factory.mktemp("erasure-template") / "home")


@pytest.fixture
def home(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = copy_home(template, tmp_path / "home")
    monkeypatch.setenv("MEDSERVE_HOME", str(path))  # for the CLI
    monkeypatch.delenv("MEDSERVE_STORE_URI", raising=False)
    monkeypatch.delenv("MEDSERVE_AUDIT_FAILURE", raising=False)
    return path


# -- helpers -----------------------------------------------------------------------------------


def _predict_and_label(client: TestClient, state: Any, headers: dict[str, str]) -> None:
    """Two requests of two rows for A (one with the caller's request id), one each for B and
    C, all written to the prediction log; outcomes by patient window for each, by id for B."""
    sent = [(A, "req-a-1"), (A, None), (B, "req-b-1"), (C, None)]
    for patient, request_id in sent:
        extra = {"X-Patient-ID": patient, **({"X-Request-ID": request_id} if request_id else {})}
        response = client.post(
            f"/v1/models/{MODEL}/predict",
            json={"instances": records(2)},
            headers={**headers, **extra},
        )
        assert response.status_code == 200, response.text
    state.get(PREDICTION_LOG).flush()
    items: list[dict[str, Any]] = [
        {
            "patient_id": patient,
            "model": MODEL,
            "start": WIDE[0].isoformat(),
            "end": WIDE[1].isoformat(),
            "outcome": outcome,
        }
        for patient, outcome in ((A, 1), (B, 0), (C, 1))
    ]
    items.append({"prediction_id": "req-b-1-1", "outcome": "malignant"})
    labelled = client.post("/v1/outcomes", json={"outcomes": items}, headers=headers)
    assert labelled.status_code == 200, labelled.text
    assert labelled.json()["matched"] == [4, 2, 2, 1]


@contextmanager
def _engine(home: Path) -> Iterator[sa.Engine]:
    with registry_at(home) as registry:
        yield registry.store.engine  # type: ignore[attr-defined]


def _predictions(home: Path, *patients: str) -> dict[str, dict[str, Any]]:
    salt = load_or_create_salt(home)
    wanted = {p for patient in patients for p in pseudonyms_of(patient, salt)}
    with _engine(home) as engine:
        found = MonitoringStore(engine).predictions(MODEL, *WIDE)
    return {p.id: asdict(p) for p in found if p.patient in wanted}


def _give_keys(home: Path) -> dict[str, str]:
    """A, B and C have audit references (what the security extension will create)."""
    salt = load_or_create_salt(home)
    with _engine(home) as engine, engine.begin() as conn:
        return PatientKeys().refs(conn, {pseudonymize(p, salt=salt) for p in (A, B, C)})


def _needles(home: Path, patient: str) -> list[str]:
    return [patient, patient.casefold(), *sorted(pseudonyms_of(patient, load_or_create_salt(home)))]


def _mentions(home: Path, needles: list[str], *, skip: frozenset[str] = frozenset()) -> list[str]:
    """``table.column`` of every stored value that contains one of ``needles``."""
    found = []
    with _engine(home) as engine, engine.connect() as conn:
        for table in metadata.sorted_tables:
            if table.name in skip or not sa.inspect(conn).has_table(table.name):
                continue
            for row in conn.execute(sa.select(table)).mappings():
                for column, value in row.items():
                    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                    if any(n in text for n in needles):
                        found.append(f"{table.name}.{column}")
    return found


def _files_naming(home: Path, needles: list[str]) -> list[str]:
    """Every file under the home (database, WAL, journals, keys) whose bytes hold a needle."""
    raw = [n.encode() for n in needles]
    return [
        str(path.relative_to(home))
        for path in sorted(home.rglob("*"))
        if path.is_file() and any(n in path.read_bytes() for n in raw)
    ]


def _audit_entries(home: Path) -> list[dict[str, Any]]:
    with _engine(home) as engine:
        audit = AuditLog(engine, keys=load_audit_keys(home))
        while audit.drain_outbox():
            pass
        return list(audit.entries())


def _verify_with_the_cli() -> None:
    result = CliRunner().invoke(cli, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert "audit trail intact" in result.output


def _assert_erased(home: Path, before: dict[str, dict[str, Any]], logged: str) -> None:
    assert _predictions(home, A) == {}
    assert _predictions(home, B, C) == before  # values and outcomes alike
    needles = _needles(home, A)
    # The raw identifier is nowhere; nor is the pseudonym (the audit trail holds references).
    assert _mentions(home, [A, A.casefold()]) == []
    assert _mentions(home, needles) == []
    assert _files_naming(home, [A, A.casefold()]) == []
    assert not any(n in logged for n in needles)
    entries = _audit_entries(home)
    erased = [e for e in entries if e["action"] == ERASED_ACTION]
    assert len(erased) == 1
    assert not any(n in str(erased) for n in needles)
    _verify_with_the_cli()


# -- tests -------------------------------------------------------------------------------------


def test_an_admin_erases_a_patient_over_http(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    admin = create_key(home, ["admin"])
    refs = _give_keys(home)
    with serve(home, security=True) as (client, state):
        _predict_and_label(client, state, admin)
        before = _predictions(home, B, C)
        assert len(before) == 4
        assert all(p["outcome"] is not None for p in before.values())
        assert len(_predictions(home, A)) == 4
        [by_id] = [
            i for i, p in before.items() if p["outcome"] == "malignant"
        ]  # req-b-1, row 1 (by id)
        response = client.post(
            "/v1/patients/erase",
            json={"patient_id": A, "reason": f"erasure request from {A}, ticket 2026-117"},
            headers={**admin, "X-Request-ID": "erase-1"},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body == {
            "erased": True,
            "predictions": 4,
            "batches_rewritten": body["batches_rewritten"],
            "batches_deleted": body["batches_deleted"],
            "outcomes": 4,
            "request_ids": body["request_ids"],
            "patient_keys": 1,
            "journal_records": 0,
            "wal_truncated": body["wal_truncated"],
        }
        assert body["batches_rewritten"] + body["batches_deleted"] >= 1
        assert body["request_ids"] >= 1  # req-a-1 at least (a caller's id: indexed)
        assert not any(n in response.text for n in [*_needles(home, A), *refs.values()])
        # B's outcome by id still lands on B's second row after the rewrite
        again = client.post(
            "/v1/outcomes",
            json={"outcomes": [{"prediction_id": "req-b-1-1", "outcome": "benign"}]},
            headers=admin,
        )
        assert again.json()["matched"] == [1]
        before[by_id]["outcome"] = "benign"
    before[by_id]["outcome_at"] = _predictions(home, B)[by_id]["outcome_at"]
    _assert_erased(home, before, caplog.text)
    [access] = [e for e in _audit_entries(home) if e["detail"] == "POST /v1/patients/erase"]
    assert access["patient_hash"] is None
    assert access["outcome"] == 200
    [entry] = [e for e in _audit_entries(home) if e["action"] == ERASED_ACTION]
    assert entry["actor"] == "key:test"
    assert "ticket 2026-117" in entry["detail"]
    assert "predictions=4" in entry["detail"]


def test_medserve_erase_on_the_command_line(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    admin = create_key(home, ["admin"])
    _give_keys(home)
    with serve(home, security=True) as (client, state):
        _predict_and_label(client, state, admin)
    before = _predictions(home, B, C)
    result = CliRunner().invoke(
        cli, ["erase", "--patient", A, "--reason", "ticket 5", "--yes"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "predictions: 4" in result.output
    assert "outcomes: 4" in result.output
    assert not any(n in result.output for n in _needles(home, A))
    _assert_erased(home, before, caplog.text)
    [entry] = [e for e in _audit_entries(home) if e["action"] == ERASED_ACTION]
    assert entry["actor"].startswith("cli:")


def test_the_command_line_asks_before_it_erases(home: Path) -> None:
    result = CliRunner().invoke(cli, ["erase", "--patient", A], input="n\n")
    assert result.exit_code != 0
    assert not any(e["action"] == ERASED_ACTION for e in _audit_entries(home))


@pytest.mark.parametrize("role", ["developer", "approver", "app", "auditor"])
def test_only_admins_may_erase(home: Path, role: str) -> None:
    headers = create_key(home, [role])
    with serve(home, security=True) as (client, _):
        response = client.post("/v1/patients/erase", json={"patient_id": A}, headers=headers)
    assert response.status_code == 403, response.text
    assert "'erase'" in response.json()["error"]
    assert not any(e["action"] == ERASED_ACTION for e in _audit_entries(home))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body.patient_id"),
        ({"patient_id": ""}, "body.patient_id"),
        ({"patient_id": "   "}, "body.patient_id"),
        ({"patient_id": "x" * 257}, "body.patient_id"),
        ({"patient_id": A, "reason": "r" * 501}, "body.reason"),
        ({"patient_id": A, "mrn": A}, "body.mrn"),
        ({"patient_id": 12345}, "body.patient_id"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_field(home: Path, body: dict[str, Any], field: str) -> None:
    headers = create_key(home, ["admin"])
    with serve(home, security=True) as (client, _):
        response = client.post("/v1/patients/erase", json=body, headers=headers)
    assert response.status_code == 400, response.text
    assert field in [d["field"] for d in response.json()["details"]]
    assert A not in response.text  # the identifier is not echoed back


def test_the_audit_trail_keeps_only_an_unlinkable_reference(home: Path) -> None:
    admin = create_key(home, ["admin"])
    refs = _give_keys(home)
    salt = load_or_create_salt(home)
    reference_of_a = refs[pseudonymize(A, salt=salt)]
    with serve(home, security=True) as (client, state):
        _predict_and_label(client, state, admin)
        erased = client.post("/v1/patients/erase", json={"patient_id": A}, headers=admin)
        assert erased.status_code == 200, erased.text
    assert _mentions(home, _needles(home, A)) == []
    assert _files_naming(home, _needles(home, A)) == []
    # the reference stays in the chain (it verifies), but its key is gone
    assert any(m.startswith(f"{sec_audit.name}.") for m in _mentions(home, [reference_of_a]))
    _verify_with_the_cli()

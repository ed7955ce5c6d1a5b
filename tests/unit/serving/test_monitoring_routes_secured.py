"""The monitoring routes behind the security middleware, in process: outcomes spend one
rate-limit token per request and are authorized per item's model; an alert acknowledgement
leaves one audit entry; a full prediction log refuses predictions with a 503 (fail_closed)."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.unit.serving.inprocess_app import (
    MODEL,
    create_key,
    fire_alert,
    records,
    registry_at,
    serve,
)

from medserve.core.audit import AuditLog
from medserve.core.context import stored_request_id
from medserve.core.phi import load_or_create_salt
from medserve.core.store.tables_monitoring import mon_prediction_batches
from medserve.serving.extensions.monitoring import PREDICTION_LOG


def _stored(home: Path, request_id: str) -> str:
    """A caller's X-Request-ID as the stores keep it (a keyed hash)."""
    return stored_request_id(request_id, None, load_or_create_salt(home))


def _audit_entries(home: Path, request_id: str) -> list[dict[str, object]]:
    stored = _stored(home, request_id)
    with registry_at(home) as registry:
        audit = AuditLog(registry.store.engine)  # type: ignore[attr-defined]
        return [e for e in audit.entries(limit=1000) if e["request_id"] == stored]


def test_outcomes_spend_one_rate_limit_token_per_request(home: Path) -> None:
    """Ten outcomes in one POST under a limit of 3 requests/s: one request, one token."""
    headers = create_key(home, ["app"], rate_limit=3)
    now = datetime.now(UTC)
    by_patient = {
        "patient_id": "MRN-1",
        "model": MODEL,
        "start": (now - timedelta(hours=1)).isoformat(),
        "end": now.isoformat(),
        "outcome": 1,
    }
    outcomes = [{"prediction_id": f"p{i}-0", "outcome": 0} for i in range(5)] + [by_patient] * 5
    with serve(home, security=True) as (client, state):
        response = client.post("/v1/outcomes", json={"outcomes": outcomes}, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["matched"] == [0] * 10
        # The bucket (burst 3) lost exactly this request's token.
        [(tokens, _)] = state.guard.limiter._buckets.values()
        assert 1.9 <= tokens < 2.1


def test_outcomes_are_authorized_per_items_model(home: Path) -> None:
    headers = create_key(home, ["app"], models=[MODEL])
    now = datetime.now(UTC)

    def item(model: str) -> dict[str, object]:
        return {
            "patient_id": "MRN-1",
            "model": model,
            "start": (now - timedelta(hours=1)).isoformat(),
            "end": now.isoformat(),
            "outcome": 1,
        }

    with serve(home, security=True) as (client, _):
        ok = client.post("/v1/outcomes", json={"outcomes": [item(MODEL)]}, headers=headers)
        assert ok.status_code == 200, ok.text
        mixed = {"outcomes": [item(MODEL), item("another-model")]}
        refused = client.post("/v1/outcomes", json=mixed, headers=headers)
        assert refused.status_code == 403
        assert refused.json()["code"] == "permission_denied"
        assert "another-model" in refused.json()["error"]


def test_alert_acknowledgement_is_audited_once(home: Path) -> None:
    alert_id = fire_alert(home)
    headers = {**create_key(home, ["developer"]), "X-Request-ID": "ack-request-1"}
    with serve(home, security=True) as (client, _):
        response = client.post(
            f"/v1/alerts/{alert_id}/acknowledge", json={"note": "checked"}, headers=headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "acknowledged"
    entries = _audit_entries(home, "ack-request-1")
    assert len(entries) == 1, entries
    [entry] = entries
    assert entry["action"] == "alert_acknowledge"
    assert entry["model"] == MODEL
    assert entry["actor"] == "key:test"
    assert entry["outcome"] == 200
    # the store's entry, committed with the acknowledgement (the note's text is never copied)
    assert str(entry["detail"]).startswith(f"alert {alert_id} (")
    assert "checked" not in str(entry["detail"])


def _logged_ids(home: Path) -> set[str]:
    with registry_at(home) as registry, registry.store.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(sa.select(mon_prediction_batches.c.ids)).scalars().all()
    return {i for row in rows for i in json.loads(row)}


def test_a_full_prediction_log_refuses_predictions_with_503(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fail_closed (the default): every answered prediction is logged; the refused one is not
    answered, and the audit trail holds only its refusal (no "predict 200" for it)."""
    monkeypatch.delenv("MEDSERVE_AUDIT_FAILURE", raising=False)
    monkeypatch.setenv("MEDSERVE_MONITOR_QUEUE_SIZE", "1")
    monkeypatch.setenv("MEDSERVE_MONITOR_FLUSH_INTERVAL_S", "60")
    headers = create_key(home, ["app"])
    body = {"instances": records(1)}
    answered: list[str] = []
    refusal = None
    with serve(home, security=True) as (client, _):
        ready = client.get(f"/v2/models/{MODEL}/ready", headers=headers)
        assert ready.status_code == 200, ready.text
        # Another connection holds SQLite's write lock: the log's writer cannot drain.
        holder = sqlite3.connect(str(home / "registry.db"), timeout=30)
        holder.execute("BEGIN IMMEDIATE")
        try:
            for i in range(10):
                rid = f"full-log-{i}"
                response = client.post(
                    f"/v1/models/{MODEL}/predict",
                    json=body,
                    headers={**headers, "X-Request-ID": rid},
                )
                if response.status_code == 200:
                    answered.append(rid)
                    continue
                refusal = (rid, response)
                break
        finally:
            holder.rollback()
            holder.close()
    assert refusal is not None, "the log never filled up"
    refused_id, response = refusal
    assert response.status_code == 503
    assert response.json()["code"] == "prediction_log_full"
    assert "prediction log is full" in response.json()["error"]
    assert answered  # the queue held one prediction before it was full
    logged = _logged_ids(home)  # written on shutdown (the lifespan drains the log)
    assert {f"{_stored(home, rid)}-0" for rid in answered} <= logged
    assert f"{_stored(home, refused_id)}-0" not in logged
    outcomes = [e["outcome"] for e in _audit_entries(home, refused_id)]
    assert outcomes == [503]


def test_an_alert_id_past_a_bigint_is_a_400_not_a_500(home: Path) -> None:
    headers = create_key(home, ["admin"])
    with serve(home, security=True) as (client, _):
        response = client.post("/v1/alerts/18446744073709551616/acknowledge", headers=headers)
    assert response.status_code == 400
    assert "alert_id" in response.json()["error"]


def test_outcomes_by_id_touch_only_the_keys_own_models(home: Path) -> None:
    """A key limited to another model can neither label a prediction of this one nor learn
    that its id exists: the answer is the one an unknown id gets."""
    admin = create_key(home, ["admin"])
    other = create_key(home, ["app"], models=["another-model"])
    with serve(home, security=True) as (client, resources):
        answer = client.post(
            f"/v1/models/{MODEL}/predict",
            json={"instances": records(1)},
            headers={**admin, "X-Request-ID": "labelled-1"},
        )
        assert answer.status_code == 200
        resources.get(PREDICTION_LOG).flush()
        outcome = {"outcomes": [{"prediction_id": "labelled-1-0", "outcome": 1}]}
        unknown = {"outcomes": [{"prediction_id": "nobody-0", "outcome": 1}]}
        forbidden = client.post("/v1/outcomes", json=outcome, headers=other)
        not_there = client.post("/v1/outcomes", json=unknown, headers=other)
        assert forbidden.status_code == not_there.status_code == 200
        assert (
            forbidden.json()
            == not_there.json()
            == {"matched": [0], "labelled": 0, "unmatched": [0]}
        )
        own = client.post("/v1/outcomes", json=outcome, headers=admin)
        assert own.json() == {"matched": [1], "labelled": 1, "unmatched": []}


def test_an_outcome_that_is_no_observation_is_refused(home: Path) -> None:
    headers = {**create_key(home, ["admin"]), "content-type": "application/json"}
    with serve(home, security=True) as (client, _):
        for raw in ("NaN", "Infinity", '""'):
            body = '{"outcomes": [{"prediction_id": "p-0", "outcome": ' + raw + "}]}"
            response = client.post("/v1/outcomes", content=body, headers=headers)
            assert response.status_code == 400, (raw, response.text)
            assert "outcomes.0" in response.json()["error"]

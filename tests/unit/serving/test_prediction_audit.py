"""The prediction pipeline's observe step audits every answer of the prediction endpoints, the
successes and the refusals alike, once each (no second entry from the security middleware);
a request refused before its caller is known is counted, audited per source and minute
(``auth_failed``, see test_auth_failures_audit.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support import wait_for
from tests.unit.serving.inprocess_app import (
    MODEL,
    create_key,
    records,
    registry_at,
    serve,
)

from medserve.core.audit import AuditLog
from medserve.core.context import stored_request_id
from medserve.core.patients import PatientKeys
from medserve.core.phi import load_or_create_salt, pseudonymize


def _entries(home: Path) -> dict[str, list[dict[str, object]]]:
    by_request: dict[str, list[dict[str, object]]] = {}
    with registry_at(home) as registry:
        audit = AuditLog(registry.store.engine)  # type: ignore[attr-defined]
        for entry in audit.entries(limit=1000):
            by_request.setdefault(str(entry["request_id"]), []).append(entry)
    return by_request


def test_successes_and_refusals_of_predictions_are_audited_once(home: Path) -> None:
    headers = create_key(home, ["app"])
    path = f"/v1/models/{MODEL}/predict"
    good = {"instances": records(1)}
    bad = {"instances": [{**records(1)[0], "mean radius": "wide"}]}
    with serve(home, security=True) as (client, _):
        answers = {
            "ok-1": client.post(path, json=good, headers={**headers, "X-Request-ID": "ok-1"}),
            "no-key-1": client.post(path, json=good, headers={"X-Request-ID": "no-key-1"}),
            "invalid-1": client.post(
                path,
                json=bad,
                headers={**headers, "X-Request-ID": "invalid-1", "X-Patient-ID": "MRN-0042"},
            ),
            "missing-1": client.post(
                "/v1/models/no-such-model/predict",
                json=good,
                headers={**headers, "X-Request-ID": "missing-1"},
            ),
        }
    assert {rid: r.status_code for rid, r in answers.items()} == {
        "ok-1": 200,
        "no-key-1": 401,
        "invalid-1": 422,
        "missing-1": 404,
    }
    salt = load_or_create_salt(home)
    entries = {  # a caller's X-Request-ID is kept only as a keyed hash
        rid: _entries(home).get(stored_request_id(rid, None, salt), []) for rid in answers
    }
    assert entries.pop("no-key-1") == []  # counted in its source's minute, not kept one by one
    for rid, entry_list in entries.items():
        assert len(entry_list) == 1, (rid, entry_list)
        [entry] = entry_list
        assert entry["action"] == "predict"
        assert entry["outcome"] == answers[rid].status_code
    [failed] = [e for rows in _entries(home).values() for e in rows if e["outcome"] == 401]
    assert failed["action"] == "auth_failed"
    assert failed["actor"] == "unauthenticated"
    assert str(failed["detail"]).startswith("1 request refused: missing_credential on ")
    assert entries["invalid-1"][0]["actor"] == "key:test"
    # a model this server does not serve is the caller's text (a patient's name, say): not kept
    assert entries["missing-1"][0]["model"] == "-"
    assert entries["missing-1"][0]["detail"] == "POST /v1/models/{name}/predict"
    # the trail names a patient by a reference under the patient's own key (erasable)
    pseudonym = pseudonymize("MRN-0042", salt=salt)
    with registry_at(home) as registry, registry.store.engine.begin() as conn:  # type: ignore[attr-defined]
        reference = PatientKeys().refs(conn, {pseudonym})[pseudonym]
    assert entries["invalid-1"][0]["patient_hash"] == reference
    assert pseudonym not in str(entries)
    assert "MRN-0042" not in str(entries)


def test_an_unauthenticated_url_leaves_no_trace_of_its_model_name(home: Path) -> None:
    """Before the caller is known, the model name in the URL is anyone's text (a patient's name
    here): neither the audit trail nor the metrics keep it."""
    named = "Quaxley-Zebulon-MRN-98765432"
    admin = create_key(home, ["admin"])
    with serve(home, security=True) as (client, _):
        refused = [
            client.post(f"/v1/models/{named}/predict", json={"instances": records(1)}),
            client.post(f"/v2/models/{named}/infer", json={"inputs": []}),
            client.get(f"/v1/models/{named}"),
            client.get(f"/v1/models/{named}/versions/1/card"),
        ]
        metrics_text = client.get("/metrics", headers=admin).text
    assert {r.status_code for r in refused} == {401}
    entries = [e for rows in _entries(home).values() for e in rows]
    failed = [e for e in entries if e["outcome"] == 401]  # counted per source and minute
    assert {e["action"] for e in failed} == {"auth_failed"}
    assert sum(int(str(e["detail"]).split(" ")[0]) for e in failed) == len(refused)
    assert "Quaxley" not in str(entries)
    assert "Quaxley" not in metrics_text


def test_a_tenants_keys_see_their_own_models_in_the_audit_and_the_metrics(home: Path) -> None:
    admin = create_key(home, ["admin"])
    onc_auditor = create_key(home, ["auditor"], tenant="onc")
    path = f"/v1/models/{MODEL}/predict"  # breast-cancer is not the onc tenant's model
    with serve(home, security=True) as (client, _):
        assert client.post(path, json={"instances": records(1)}, headers=admin).status_code == 200

        def written() -> dict[str, Any] | None:  # the writer stores queued entries each second
            page = client.get("/v1/audit", params={"limit": 1000}, headers=admin).json()
            return page if MODEL in {e["model"] for e in page["entries"]} else None

        as_admin = wait_for(written, timeout_s=30, what="the prediction's audit entry")
        as_onc = client.get("/v1/audit", params={"limit": 1000}, headers=onc_auditor).json()
        metrics_admin = client.get("/metrics", headers=admin).text
        metrics_onc = client.get("/metrics", headers=onc_auditor)
    assert MODEL in {e["model"] for e in as_admin["entries"]}
    assert as_onc["entries"] == []
    assert f'model="{MODEL}"' in metrics_admin
    assert metrics_onc.status_code == 200
    assert f'model="{MODEL}"' not in metrics_onc.text
    assert "medserve_requests" in metrics_onc.text  # the families are there, not the series


def test_a_tenant_admin_can_neither_give_away_nor_take_a_model(home: Path) -> None:
    admin = create_key(home, ["admin"])
    onc_admin = create_key(home, ["admin"], tenant="onc")
    with serve(home, security=True) as (client, _):
        tenants = f"/v1/security/tenants/{MODEL}"
        taken = client.put(tenants, json={"tenant": "onc"}, headers=onc_admin)  # not its model
        assert taken.status_code == 403
        assert client.put(tenants, json={"tenant": "onc"}, headers=admin).status_code == 200
        given = client.put(tenants, json={"tenant": "cardio"}, headers=onc_admin)  # its own
        assert given.status_code == 403
        kept = client.put(tenants, json={"tenant": "onc"}, headers=onc_admin)
        assert kept.status_code == 200


def test_a_url_naming_no_served_model_leaves_no_trace_even_authenticated(home: Path) -> None:
    """An authenticated caller's URL may name anything too: a model or version this server does
    not serve, or a route that does not exist, is kept neither in the trail nor the metrics."""
    named = "Quaxley-Zebulon-MRN-98765432"
    admin = create_key(home, ["admin"])
    auditor = create_key(home, ["auditor"])
    body = {"instances": records(1)}
    with serve(home, security=True) as (client, _):
        answers = [
            client.post(f"/v1/models/{named}/predict", json=body, headers=admin),
            client.post(f"/v2/models/{MODEL}/versions/{named}/infer", json={}, headers=admin),
            client.post(f"/v1/models/{named}/predict", json=body, headers=auditor),
            client.get(f"/v1/models/{named}/versions/1/card", headers=admin),
            client.get(f"/patients/{named}/chart", headers=admin),
        ]
        kept = client.post(f"/v1/models/{MODEL}/versions/7/predict", json=body, headers=admin)
        metrics_text = client.get("/metrics", headers=admin).text
    assert [r.status_code for r in answers] == [404, 404, 403, 404, 404]
    entries = [e for rows in _entries(home).values() for e in rows]
    assert len([e for e in entries if e["outcome"] in (403, 404)]) == len(answers) + 1
    assert "Quaxley" not in str(entries)
    assert "98765432" not in str(entries)
    assert "Quaxley" not in metrics_text
    # what the server serves is still named: the model, and a version number
    assert kept.status_code == 404
    [missing_version] = [e for e in entries if e["version"] == "7"]
    assert missing_version["model"] == MODEL
    assert missing_version["detail"] == "POST /v1/models/{name}/versions/{version}/predict"

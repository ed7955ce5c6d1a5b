"""FHIR R4 and CDS Hooks 2.0 against a real server process on loopback."""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.riskassessment import RiskAssessment
from tests.support import ServerProcess, auth, create_key, free_port, start_server, wait_for

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.faces.demo.interop import (
    MODEL,
    example_bundle,
    example_hook_request,
    example_resources,
    register_cardio_model,
)

FHIR = "application/fhir+json"
GLUCOSE_PER_MMOL = 18.0156
CREATININE_UMOL_PER_MG = 88.42

# The CDS Hooks 2.0 specification's own patient-view request example (section "HTTP Request"):
# it names a FHIR server medserve is not allowed to query and prefetches only the Patient.
SPEC_PATIENT_VIEW = {
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "http://hooks.smarthealthit.org:9080",
    "hook": "patient-view",
    "fhirAuthorization": {
        "access_token": "some-opaque-fhir-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read user/Observation.read",
        "subject": "cds-service4",
    },
    "context": {"userId": "Practitioner/example", "patientId": "1288992", "encounterId": "89284"},
    "prefetch": {
        "patientToGreet": {
            "resourceType": "Patient",
            "gender": "male",
            "birthDate": "1925-12-23",
            "id": "1288992",
            "active": True,
        }
    },
}
# The specification's feedback example, with the card id replaced by one medserve issued.
SPEC_FEEDBACK = {
    "feedback": [
        {
            "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
            "outcome": "overridden",
            "overrideReason": {
                "reason": {
                    "code": "reason-code-provided-by-service",
                    "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
                },
                "userComment": "clinician entered comment",
            },
            "outcomeTimestamp": "2020-12-11T00:00:00Z",
        }
    ]
}


class _FhirServer(BaseHTTPRequestHandler):
    """A minimal read-only FHIR server on loopback: Patient read and code searches."""

    resources: list[dict[str, Any]] = []
    requests: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:
        url = urlparse(self.path)
        self.requests.append((url.path, self.headers.get("Authorization")))
        parts = url.path.strip("/").split("/")
        if parts[-2:-1] == ["Patient"]:
            body: dict[str, Any] = next(
                r for r in self.resources if r["resourceType"] == "Patient" and r["id"] == parts[-1]
            )
        else:
            codes = {c.split("|")[-1] for c in parse_qs(url.query)["code"][0].split(",")}
            found = [
                r
                for r in self.resources
                if r["resourceType"] == parts[-1] and r["code"]["coding"][0]["code"] in codes
            ]
            body = {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": r} for r in found],
            }
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", FHIR)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def fhir_server() -> Iterator[str]:
    _FhirServer.resources = list(example_resources("fetched-1"))
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), _FhirServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/fhir"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fhir_server: str) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("interop-home")
    registry = Registry.open(Settings(home=home))
    try:
        register_cardio_model(registry)
    finally:
        registry.close()
    proc = start_server(home, env={"MEDSERVE_CDS_FHIR_SERVERS": json.dumps([fhir_server])})
    yield proc
    proc.stop()


def _predict(
    server: ServerProcess, body: Any, media: str, accept: str | None = None, query: str = ""
) -> httpx.Response:
    headers = {**server.headers, "Content-Type": media}
    if accept:
        headers["Accept"] = accept
    return httpx.post(
        f"{server.url}/v1/models/{MODEL}/predict{query}",
        content=json.dumps(body),
        headers=headers,
        timeout=60,
    )


def _equivalent_record() -> dict[str, float]:
    """What the example Bundle says, written by hand in the model's own units."""
    return {
        "age": float(_age()),
        "sex_male": 1.0,
        "glucose": 7.8 * GLUCOSE_PER_MMOL,
        "creatinine": 123.0 / CREATININE_UMOL_PER_MG,
        "systolic_bp": (152 + 146) / 2,
        "diastolic_bp": (91 + 88) / 2,
        "bmi": 31.2,
        "hypertension": 1.0,
    }


def _age() -> int:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return 67 - (1 if (now.month, now.day) < (1, 15) else 0)


def test_fhir_bundle_with_si_units_predicts_like_the_records_request(server: ServerProcess) -> None:
    via_fhir = _predict(server, example_bundle(), FHIR)
    via_records = _predict(server, {"instances": [_equivalent_record()]}, "application/json")
    assert via_fhir.status_code == 200, via_fhir.text
    assert via_records.status_code == 200, via_records.text
    fhir_p = via_fhir.json()["predictions"][0]["probabilities"]["1"]
    records_p = via_records.json()["predictions"][0]["probabilities"]["1"]
    assert fhir_p == pytest.approx(records_p, abs=1e-4)
    assert (
        via_fhir.json()["predictions"][0]["label"] == via_records.json()["predictions"][0]["label"]
    )


def test_missing_code_and_unconvertible_unit_give_an_operation_outcome(
    server: ServerProcess,
) -> None:
    bundle = example_bundle()
    bundle["entry"] = [
        e for e in bundle["entry"] if not e["resource"]["id"].endswith("-bmi")
    ]  # no BMI Observation at all
    glucose = next(e for e in bundle["entry"] if e["resource"]["id"].endswith("-glu"))
    glucose["resource"]["valueQuantity"] = {"value": 7.8, "unit": "mmol"}  # not a concentration
    response = _predict(server, bundle, FHIR)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith(FHIR)
    outcome = OperationOutcome.model_validate(response.json())
    diagnostics = [i.diagnostics or "" for i in outcome.issue]
    assert any("'bmi'" in d and "39156-5" in d for d in diagnostics), diagnostics
    assert any("'glucose'" in d and "'mmol' cannot be converted to mg/dL" in d for d in diagnostics)
    assert {i.code for i in outcome.issue} == {"required", "value"}
    # the server keeps serving
    assert _predict(server, example_bundle(), FHIR).status_code == 200


def test_malformed_fhir_json_is_an_operation_outcome(server: ServerProcess) -> None:
    response = httpx.post(
        f"{server.url}/v1/models/{MODEL}/predict",
        content=b'{"resourceType": "Bundle", ',
        headers={**server.headers, "Content-Type": FHIR},
        timeout=30,
    )
    assert response.status_code == 422
    outcome = OperationOutcome.model_validate(response.json())
    assert outcome.issue[0].code == "structure"


@pytest.mark.parametrize(("accept", "query"), [(FHIR, ""), (None, "?format=fhir")])
def test_risk_assessment_out(server: ServerProcess, accept: str | None, query: str) -> None:
    response = _predict(server, example_bundle(), FHIR, accept=accept, query=query)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR)
    bundle = Bundle.model_validate(response.json())
    assert bundle.type == "collection"
    [entry] = bundle.entry or []
    assessment = RiskAssessment.model_validate(entry.resource.model_dump(mode="json"))
    assert assessment.status == "final"
    assert assessment.subject.reference == "Patient/example-1"
    assert assessment.performer is not None
    assert assessment.performer.reference == "#model"
    [device] = assessment.contained or []
    device_json = device.model_dump(mode="json")
    assert device_json["deviceName"][0]["name"] == f"medserve:{MODEL}"
    assert device_json["version"][0]["value"] == "1"
    basis = {b.reference for b in assessment.basis or []}
    assert "urn:example:Observation/example-1-glu" in basis
    assert "urn:example:Condition/example-1-htn" in basis
    [prediction] = assessment.prediction or []
    plain = _predict(server, example_bundle(), FHIR).json()["predictions"][0]
    probability = float(prediction.probabilityDecimal)
    assert probability == pytest.approx(plain["probabilities"]["1"], abs=1e-5)
    expected_band = "low" if probability < 0.1 else "moderate" if probability < 0.3 else "high"
    assert prediction.qualitativeRisk.coding[0].code == expected_band
    assert prediction.rationale
    assert "raised the risk" in prediction.rationale


def test_records_in_fhir_out(server: ServerProcess) -> None:
    rows = [_equivalent_record(), {**_equivalent_record(), "glucose": 85.0, "age": 40.0}]
    response = _predict(server, {"instances": rows}, "application/json", accept=FHIR)
    assert response.status_code == 200, response.text
    entries = Bundle.model_validate(response.json()).entry or []
    assert len(entries) == 2
    probabilities = [
        float(
            RiskAssessment.model_validate(e.resource.model_dump(mode="json"))
            .prediction[0]
            .probabilityDecimal
        )  # type: ignore[index]
        for e in entries
    ]
    assert probabilities[1] < probabilities[0]


def test_cds_discovery_lists_the_service_with_prefetch(server: ServerProcess) -> None:
    response = httpx.get(f"{server.url}/cds-services", headers=server.headers, timeout=30)
    assert response.status_code == 200
    [service] = [s for s in response.json()["services"] if s["id"] == MODEL]
    assert service["hook"] == "patient-view"
    assert service["title"]
    assert service["description"]
    prefetch = service["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert prefetch["obs-glucose"].startswith("Observation?patient={{context.patientId}}&")
    assert "http://loinc.org%7C14749-6" in prefetch["obs-glucose"]  # '|' encoded in a URL
    assert "http://loinc.org%7C85354-9" in prefetch["obs-systolic_bp"]  # the BP panel too
    assert prefetch["cond-hypertension"].startswith("Condition?patient={{context.patientId}}")


def _call(server: ServerProcess, body: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/cds-services/{MODEL}", json=body, headers=server.headers, timeout=60
    )


def test_hook_call_with_prefetch_returns_a_card(server: ServerProcess) -> None:
    response = _call(server, example_hook_request())
    assert response.status_code == 200, response.text
    [card] = response.json()["cards"]
    assert len(card["summary"]) < 140
    assert card["indicator"] in {"info", "warning", "critical"}
    assert card["source"]["label"]
    # no MEDSERVE_PUBLIC_URL: no link (an absolute one would come from the Host header)
    assert "url" not in card["source"]
    plain = _predict(server, example_bundle(), FHIR).json()["predictions"][0]
    probability = plain["probabilities"]["1"]
    expected = "info" if probability < 0.1 else "warning" if probability < 0.3 else "critical"
    assert card["indicator"] == expected
    assert f"{probability:.0%}" in card["summary"]
    assert "raised the risk" in card["detail"]
    card_page = httpx.get(
        f"{server.url}/v1/models/{MODEL}/versions/1/card?format=html",
        headers=server.headers,
        timeout=30,
    )
    assert card_page.status_code == 200
    audit = httpx.get(
        f"{server.url}/v1/audit",
        params={"model": MODEL, "limit": 1000},
        headers=server.headers,
        timeout=30,
    ).json()["entries"]
    calls = [e for e in audit if e["action"] == "predict" and e["outcome"] == 200]
    assert any(e["version"] == "1" and "/cds-services/" in e["detail"] for e in calls), audit[-3:]


def test_spec_example_without_needed_prefetch_is_412(server: ServerProcess) -> None:
    response = _call(server, SPEC_PATIENT_VIEW)
    assert response.status_code == 412
    message = response.json()["error"]
    assert "obs-glucose" in message
    assert "allowlist" in message
    assert "some-opaque-fhir-access-token" not in response.text
    no_server = copy.deepcopy(example_hook_request())
    del no_server["prefetch"]["obs-bmi"]
    response = _call(server, no_server)
    assert response.status_code == 412
    assert "obs-bmi" in response.json()["error"]


def test_absent_prefetch_fetched_from_an_allowed_fhir_server(
    server: ServerProcess, fhir_server: str
) -> None:
    _FhirServer.requests.clear()
    request = {
        "hook": "patient-view",
        "hookInstance": "b3f9c0a4-0000-4000-8000-000000000001",
        "fhirServer": fhir_server,
        "fhirAuthorization": {
            "access_token": "loopback-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read user/Observation.read user/Condition.read",
            "subject": "medserve",
        },
        "context": {"userId": "Practitioner/example", "patientId": "fetched-1"},
    }
    response = _call(server, request)
    assert response.status_code == 200, response.text
    [card] = response.json()["cards"]
    assert card["indicator"] in {"warning", "critical"}
    paths = {path for path, _ in _FhirServer.requests}
    assert "/fhir/Patient/fetched-1" in paths
    assert "/fhir/Observation" in paths
    assert {token for _, token in _FhirServer.requests} == {"Bearer loopback-token"}


def test_record_lacking_a_lab_gets_a_not_scored_card(server: ServerProcess) -> None:
    request = example_hook_request()
    request["prefetch"]["obs-bmi"] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    response = _call(server, request)
    assert response.status_code == 200, response.text
    [card] = response.json()["cards"]
    assert card["indicator"] == "info"
    assert "not scored" in card["summary"]
    assert "39156-5" in card["detail"]


def test_wrong_hook_and_missing_patient_are_400(server: ServerProcess) -> None:
    wrong = {**example_hook_request(), "hook": "order-select"}
    assert _call(server, wrong).status_code == 400
    no_patient = example_hook_request()
    no_patient["context"] = {"userId": "Practitioner/example"}
    response = _call(server, no_patient)
    assert response.status_code == 400
    assert "context.patientId" in response.json()["error"]
    unknown = httpx.post(
        f"{server.url}/cds-services/no-such-service",
        json=example_hook_request(),
        headers=server.headers,
        timeout=30,
    )
    assert unknown.status_code == 404


def test_feedback_stored_counted_and_deidentified(server: ServerProcess) -> None:
    card = _call(server, example_hook_request()).json()["cards"][0]["uuid"]
    feedback = copy.deepcopy(SPEC_FEEDBACK)
    feedback["feedback"][0]["card"] = card
    feedback["feedback"][0]["overrideReason"]["userComment"] = (
        "Discussed with Dr. Alan Whitfield; patient: Maria Gonzalez, MRN 4455667, call 617-555-0199"
    )
    when = "2026-11-30T10:05:00Z"
    accepted = {
        "feedback": [
            {
                "card": card,
                "outcome": "accepted",
                "acceptedSuggestions": [],
                "outcomeTimestamp": when,
            }
        ]
    }
    url = f"{server.url}/cds-services/{MODEL}/feedback"
    assert httpx.post(url, json=feedback, headers=server.headers, timeout=30).status_code == 200
    assert httpx.post(url, json=accepted, headers=server.headers, timeout=30).status_code == 200
    unknown = {
        "feedback": [{"card": "not-a-card", "outcome": "overridden", "outcomeTimestamp": when}]
    }
    assert httpx.post(url, json=unknown, headers=server.headers, timeout=30).status_code == 404
    bad = {"feedback": [{"card": card, "outcome": "ignored"}]}
    response = httpx.post(url, json=bad, headers=server.headers, timeout=30)
    assert response.status_code == 400
    assert "outcome" in response.json()["error"]
    summary = httpx.get(
        f"{server.url}/v1/models/{MODEL}/cds-feedback", headers=server.headers, timeout=30
    ).json()
    [v1] = summary["versions"]
    assert v1["accepted"] >= 1
    assert v1["overridden"] >= 1
    assert any(r["code"] == "reason-code-provided-by-service" for r in v1["override_reasons"])
    metrics = httpx.get(f"{server.url}/metrics", headers=server.headers, timeout=30).text
    assert (
        'medserve_cds_feedback_total{model="cardio-risk",outcome="overridden",version="1"}'
        in metrics
    )
    with sqlite3.connect(server.home / "registry.db") as db:
        comments = [r[0] for r in db.execute("SELECT user_comment FROM cds_feedback")]
        dump = "\n".join(db.iterdump())
    assert any(c for c in comments)
    # names are recognised where the text marks them (title, "patient:"), as Safe Harbor text
    for phi in ("Whitfield", "Maria Gonzalez", "4455667", "617-555-0199"):
        assert phi not in dump


def test_cds_service_respects_model_grants(server: ServerProcess) -> None:
    other = create_key(server.home, ["app"], name="other-app", models=["breast-cancer"])
    response = httpx.post(
        f"{server.url}/cds-services/{MODEL}",
        json=example_hook_request(),
        headers=auth(other),
        timeout=30,
    )
    assert response.status_code == 403
    listing = httpx.get(f"{server.url}/cds-services", headers=auth(other), timeout=30)
    assert listing.status_code == 200
    assert all(s["id"] != MODEL for s in listing.json()["services"])
    assert httpx.get(f"{server.url}/cds-services", timeout=30).status_code == 401


def test_feature_map_set_from_the_cli_applies_without_restart(
    server: ServerProcess, tmp_path: Path
) -> None:
    from sklearn.linear_model import LogisticRegression

    from medserve.faces.demo.interop import FEATURES, FHIR_MAP, synthetic_cohort

    cohort = synthetic_cohort(400)
    registry = Registry.open(Settings(home=server.home))
    try:
        model = LogisticRegression(max_iter=2000).fit(cohort[FEATURES], cohort["event"])
        registry.register("cardio-plain", model, sample=cohort[FEATURES], alias="production")
    finally:
        registry.close()

    def call() -> httpx.Response:
        return httpx.post(
            f"{server.url}/v1/models/cardio-plain/predict",
            content=json.dumps(example_bundle()),
            headers={**server.headers, "Content-Type": FHIR},
            timeout=60,
        )

    def served() -> httpx.Response | None:
        """The answer once the server's reload has picked up the new model (no longer 404)."""
        response = call()
        return response if response.status_code != 404 else None

    response = wait_for(served, timeout_s=30, interval_s=0.2, what="cardio-plain to be served")
    assert response.status_code == 415
    assert (
        "declares no FHIR feature map"
        in OperationOutcome.model_validate(response.json()).issue[0].diagnostics
    )  # type: ignore[operator]

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({**FHIR_MAP, "features": {"lactate": {"loinc": "2524-7", "unit": "mmol/L"}}})
    )
    env = {**os.environ, "MEDSERVE_HOME": str(server.home)}
    cli = [sys.executable, "-m", "medserve", "models", "fhir-map", "cardio-plain@1", "--set"]
    refused = subprocess.run([*cli, str(bad)], env=env, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "not model inputs: lactate" in " ".join((refused.stdout + refused.stderr).split())

    good = tmp_path / "map.json"
    good.write_text(json.dumps(FHIR_MAP))
    done = subprocess.run([*cli, str(good)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

    def mapped() -> httpx.Response | None:
        """The answer once the server's reload has picked up the feature map (200)."""
        response = call()
        return response if response.status_code == 200 else None

    response = wait_for(mapped, timeout_s=30, interval_s=0.2, what="the FHIR map to apply")
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["probabilities"]["1"] > 0


def test_cds_services_allow_browser_clients(server: ServerProcess) -> None:
    preflight = httpx.request(
        "OPTIONS",
        f"{server.url}/cds-services/{MODEL}",
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=30,
    )
    assert preflight.status_code == 200  # Starlette's CORSMiddleware, without a credential
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    listing = httpx.get(
        f"{server.url}/cds-services",
        headers={**server.headers, "Origin": "https://sandbox.cds-hooks.org"},
        timeout=30,
    )
    assert listing.status_code == 200
    assert listing.headers["access-control-allow-origin"] == "*"
    # elsewhere no CORS: the rest of the API is not for browsers
    other = httpx.request("OPTIONS", f"{server.url}/v1/models", timeout=30)
    assert "access-control-allow-origin" not in other.headers

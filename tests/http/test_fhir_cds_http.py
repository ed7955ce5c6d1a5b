"""FHIR and CDS Hooks through the whole app, in process: Bundle reference rules, per-row patients
in the prediction log, FHIR ids, the operating threshold, and the CDS Hooks 2.0 rules on
prefetch (null keys, fhirAuthorization, next links within limits) and card links."""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.riskassessment import RiskAssessment
from starlette.testclient import TestClient
from tests.support import wait_for
from tests.unit.serving.inprocess_app import registry_at, serve

from medserve.core.phi import load_or_create_salt, pseudonymize
from medserve.core.store.monitoring import MonitoringStore
from medserve.faces.demo.interop import (
    MODEL,
    example_bundle,
    example_hook_request,
    example_resources,
    register_cardio_model,
)
from medserve.features.interop import cds_hooks
from medserve.features.interop.cds_hooks import CdsHooks, FetchLimits
from medserve.features.interop.fhir_output import OperatingThreshold
from medserve.serving.extensions import interop_http
from medserve.serving.extensions.interop import CDS_HOOKS
from medserve.serving.extensions.monitoring import PREDICTION_LOG

FHIR = "application/fhir+json"
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
SERVER = "https://ehr.example/fhir"
TOKEN = {
    "access_token": "opaque-token",
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "user/Patient.read user/Observation.read user/Condition.read",
    "subject": "medserve",
}
WIDE = (datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(hours=1))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fhir-cds") / "home"
    with registry_at(path) as registry:
        register_cardio_model(registry)
    return path


@pytest.fixture(scope="module")
def app(home: Path) -> Iterator[tuple[TestClient, Any]]:
    with serve(home, security=False) as served:
        yield served


def _fhir(client: TestClient, bundle: Any, **headers: str) -> httpx.Response:
    return client.post(
        f"/v1/models/{MODEL}/predict",
        json=bundle,
        headers={"Content-Type": FHIR, "Accept": FHIR, **headers},
    )


def _assessments(response: httpx.Response) -> list[RiskAssessment]:
    assert response.status_code == 200, response.text
    bundle = Bundle.model_validate(response.json())
    return [
        RiskAssessment.model_validate(e.resource.model_dump(mode="json"))
        for e in bundle.entry or []
    ]


def _on_server(base: str, patient_id: str, glucose_mmol: float) -> list[dict[str, Any]]:
    entries = example_bundle(patient_id)["entry"]
    for entry in entries:
        resource = entry["resource"]
        entry["fullUrl"] = f"{base}/{resource['resourceType']}/{resource['id']}"
        if resource["id"].endswith("-glu"):
            resource["valueQuantity"]["value"] = glucose_mmol
    return list(entries)


# -- FHIR in and out ---------------------------------------------------------------------------


def test_same_id_patients_of_two_servers_get_their_own_risk(
    app: tuple[TestClient, Any],
) -> None:
    client, _ = app
    a = _on_server("https://ehr-a.example/fhir", "123", 4.5)
    b = _on_server("https://ehr-b.example/fhir", "123", 14.0)
    together = _assessments(
        _fhir(client, {"resourceType": "Bundle", "type": "collection", "entry": a + b})
    )
    alone = [
        _assessments(_fhir(client, {"resourceType": "Bundle", "type": "collection", "entry": e}))
        for e in (a, b)
    ]
    assert [r.subject.reference for r in together] == [
        "https://ehr-a.example/fhir/Patient/123",
        "https://ehr-b.example/fhir/Patient/123",
    ]
    probabilities = [float(r.prediction[0].probabilityDecimal) for r in together]  # type: ignore[index]
    assert probabilities == [
        pytest.approx(float(r[0].prediction[0].probabilityDecimal), abs=1e-6)  # type: ignore[index]
        for r in alone
    ]
    assert probabilities[1] > probabilities[0]


def test_each_row_of_a_multi_patient_bundle_is_logged_with_its_patient(
    app: tuple[TestClient, Any], home: Path
) -> None:
    client, resources = app
    first, second = example_bundle("log-p1"), example_bundle("log-p2")
    bundle = {**first, "entry": first["entry"] + second["entry"]}
    response = client.post(
        f"/v1/models/{MODEL}/predict", json=bundle, headers={"Content-Type": FHIR}
    )
    assert response.status_code == 200, response.text
    resources.get(PREDICTION_LOG).flush()
    salt = load_or_create_salt(home)
    wanted = [pseudonymize(f"Patient/log-p{i}", salt=salt) for i in (1, 2)]

    def logged() -> list[str] | None:
        with registry_at(home) as registry:
            found = MonitoringStore(registry.store).predictions(MODEL, *WIDE)
        patients = [p.patient for p in found if p.patient in wanted]
        return patients if len(patients) == 2 else None

    assert wait_for(logged, timeout_s=30, what="the two rows in the log") == wanted


def test_a_callers_request_id_is_not_made_a_fhir_id(app: tuple[TestClient, Any]) -> None:
    client, _ = app
    caller = "ENC 4455/66 (ward 3)"
    response = _fhir(client, example_bundle(), **{"X-Request-ID": caller})
    [assessment] = _assessments(response)  # R4(B)-valid: ids included
    body = response.json()
    assert FHIR_ID.match(body["id"])
    assert FHIR_ID.match(body["entry"][0]["resource"]["id"])
    assert "ENC" not in body["id"] + body["entry"][0]["resource"]["id"]
    assert assessment.identifier[0].value == f"{caller}/0"  # type: ignore[index]


def test_the_operating_threshold_reaches_risk_assessment_and_card(
    app: tuple[TestClient, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = app
    threshold = OperatingThreshold(0.31, "1")
    monkeypatch.setattr(interop_http, "operating_threshold", lambda model, fmap: threshold)
    monkeypatch.setattr(cds_hooks, "operating_threshold", lambda model, fmap: threshold)
    [assessment] = _assessments(_fhir(client, example_bundle()))
    [note] = assessment.note or []
    assert note.text is not None
    assert note.text.startswith("Positive (1) at risk >= 0.31 (operating threshold of version 1)")
    response = client.post(f"/cds-services/{MODEL}", json=example_hook_request())
    assert response.status_code == 200, response.text
    [card] = response.json()["cards"]
    assert "the 31% threshold)" in card["summary"]
    assert "the operating threshold of version 1" in card["detail"]


# -- CDS Hooks ---------------------------------------------------------------------------------


def _call(client: TestClient, body: Any, **headers: str) -> httpx.Response:
    return client.post(f"/cds-services/{MODEL}", json=body, headers=headers)


def test_null_prefetch_is_no_data_not_a_precondition(app: tuple[TestClient, Any]) -> None:
    client, _ = app
    no_condition = example_hook_request()
    no_condition["prefetch"]["cond-hypertension"] = None  # the client has none: feature is 0
    response = _call(client, no_condition)
    assert response.status_code == 200, response.text
    [card] = response.json()["cards"]
    assert "not scored" not in card["summary"]
    no_bmi = example_hook_request()
    no_bmi["prefetch"]["obs-bmi"] = None  # a required lab the client does not have
    response = _call(client, no_bmi)
    assert response.status_code == 200, response.text
    [card] = response.json()["cards"]
    assert "not scored" in card["summary"]
    assert "39156-5" in card["detail"]
    no_patient = example_hook_request()
    no_patient["prefetch"]["patient"] = None
    response = _call(client, no_patient)
    assert response.status_code == 200, response.text
    assert "prefetch 'patient' is null" in response.json()["cards"][0]["detail"]
    absent = example_hook_request()
    del absent["prefetch"]["obs-bmi"]  # absent (not null), no server to ask: 412
    assert _call(client, absent).status_code == 412


def test_card_links_never_come_from_the_host_header(app: tuple[TestClient, Any]) -> None:
    client, resources = app
    response = _call(client, example_hook_request(), Host="attacker.example")
    assert response.status_code == 200, response.text
    assert "attacker.example" not in response.text
    [card] = response.json()["cards"]
    assert "url" not in card["source"]
    resources.settings.public_url = "https://medserve.hospital.example/"
    try:
        response = _call(client, example_hook_request(), Host="attacker.example")
    finally:
        resources.settings.public_url = None
    assert response.json()["cards"][0]["source"]["url"] == (
        f"https://medserve.hospital.example/v1/models/{MODEL}/versions/1/card?format=html"
    )


class _FhirServer:
    """A FHIR server behind an httpx transport: Patient read and code searches of one
    patient, ``page_size`` entries a page with ``next`` links."""

    def __init__(self, page_size: int = 100, hang: bool = False, next_base: str = SERVER):
        self.resources = list(example_resources("f1"))
        self.page_size = page_size
        self.hang = hang  # never answers (until the caller gives up)
        self.next_base = next_base
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.hang:
            await asyncio.Event().wait()
        path = request.url.path.removeprefix("/fhir/")
        if path.startswith("Patient/"):
            return httpx.Response(200, json=self.resources[0])
        params = request.url.params
        codes = {c.split("|")[-1] for c in params["code"].split(",")}
        found = [
            r
            for r in self.resources
            if r["resourceType"] == path and r["code"]["coding"][0]["code"] in codes
        ]
        offset = int(params.get("_offset", "0"))
        page = found[offset : offset + self.page_size]
        body: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in page],
        }
        if offset + self.page_size < len(found):
            query = str(request.url.params.set("_offset", str(offset + self.page_size)))
            body["link"] = [{"relation": "next", "url": f"{self.next_base}/{path}?{query}"}]
        return httpx.Response(200, json=body)


@pytest.fixture
def fhir_server(app: tuple[TestClient, Any]) -> Iterator[tuple[TestClient, CdsHooks]]:
    client, resources = app
    cds: CdsHooks = resources.get(CDS_HOOKS)
    saved = (cds.allowed, cds.transport, cds.limits)
    cds.allowed = [SERVER]
    yield client, cds
    cds.allowed, cds.transport, cds.limits = saved


def _fetching(**extra: Any) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": "b3f9c0a4-0000-4000-8000-000000000002",
        "fhirServer": SERVER,
        "context": {"userId": "Practitioner/example", "patientId": "f1"},
        **extra,
    }


def test_a_fhir_server_is_not_queried_without_fhir_authorization(
    fhir_server: tuple[TestClient, CdsHooks],
) -> None:
    client, cds = fhir_server
    server = _FhirServer()
    cds.transport = httpx.MockTransport(server)
    response = _call(client, _fetching())
    assert response.status_code == 412
    assert "no fhirAuthorization" in response.json()["error"]
    assert server.requests == []
    partial = _call(client, _fetching(fhirAuthorization={"access_token": "t"}))
    assert partial.status_code == 400  # every field of fhirAuthorization is REQUIRED
    assert "fhirAuthorization.token_type" in partial.json()["error"]


def test_next_links_are_followed_on_the_server_within_the_limits(
    fhir_server: tuple[TestClient, CdsHooks],
) -> None:
    client, cds = fhir_server
    server = _FhirServer(page_size=1)  # the two BP panels come on two pages
    cds.transport = httpx.MockTransport(server)
    response = _call(client, _fetching(fhirAuthorization=TOKEN))
    assert response.status_code == 200, response.text
    [card] = response.json()["cards"]
    assert "not scored" not in card["summary"]
    searches = [r for r in server.requests if r.url.path == "/fhir/Observation"]
    assert any(r.url.params.get("_offset") == "1" for r in searches)  # a next page was read
    raw = searches[0].url.query.decode()
    assert raw.startswith("patient=f1&code=http://loinc.org%7C")
    assert {r.headers["authorization"] for r in server.requests} == {"Bearer opaque-token"}

    cds.limits = FetchLimits(pages=1)
    response = _call(client, _fetching(fhirAuthorization=TOKEN))
    assert response.status_code == 412
    assert "more than 1 pages" in response.json()["error"]

    cds.limits = FetchLimits(bytes=600)
    response = _call(client, _fetching(fhirAuthorization=TOKEN))
    assert response.status_code == 412
    assert "exceed 600 bytes" in response.json()["error"]

    cds.limits = FetchLimits()
    cds.transport = httpx.MockTransport(_FhirServer(page_size=1, next_base="https://evil.example"))
    response = _call(client, _fetching(fhirAuthorization=TOKEN))
    assert response.status_code == 412
    assert "leaves that server" in response.json()["error"]


def test_a_slow_fhir_server_is_cut_at_the_time_limit(
    fhir_server: tuple[TestClient, CdsHooks],
) -> None:
    client, cds = fhir_server
    cds.limits = FetchLimits(seconds=0.2)
    cds.transport = httpx.MockTransport(_FhirServer(hang=True))
    response = _call(client, _fetching(fhirAuthorization=TOKEN))
    assert response.status_code == 412
    assert "within 0.2 s" in response.json()["error"]


def test_feedback_needs_its_timestamp_and_accepted_needs_suggestions(
    app: tuple[TestClient, Any],
) -> None:
    client, _ = app
    card = _call(client, example_hook_request()).json()["cards"][0]["uuid"]
    url = f"/cds-services/{MODEL}/feedback"
    when = datetime.now(UTC).isoformat()
    no_time = {"feedback": [{"card": card, "outcome": "overridden"}]}
    response = client.post(url, json=no_time)
    assert response.status_code == 400
    assert "outcomeTimestamp" in response.json()["error"]
    bare_accept = {"feedback": [{"card": card, "outcome": "accepted", "outcomeTimestamp": when}]}
    response = client.post(url, json=bare_accept)
    assert response.status_code == 400
    assert "acceptedSuggestions" in response.json()["error"]
    good = copy.deepcopy(bare_accept)
    good["feedback"][0]["acceptedSuggestions"] = []
    assert client.post(url, json=good).status_code == 200

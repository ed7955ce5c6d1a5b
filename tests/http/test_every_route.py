"""Every HTTP route and every extension, in process: the app of ``create_app`` (security on, an
admin key) over a home with a tabular classifier in two versions (``production`` and
``staging``, with a stored evaluation), a FHIR-mapped model (CDS Hooks), an ensemble, a
sequence model and an image model, its lifespan run by Starlette's ``TestClient``.

``test_every_exposed_route_has_a_case`` compares the (method, path template) pairs the app
exposes (its FastAPI routes, those of every extension's router, the docs routes and the
fast path's endpoints) with the cases below: a route added without a case here fails it. Each
case calls its route with a valid request and checks the status and the body's shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastapi.routing
import numpy as np
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from tests.support import wait_for
from tests.unit.serving.inprocess_app import (
    MODEL,
    create_key,
    fire_alert,
    make_template,
    records,
    registry_at,
    serve,
)

from medserve import __version__
from medserve.core.context import stored_request_id
from medserve.core.extensions import extensions
from medserve.core.phi import load_or_create_salt
from medserve.faces.demo.interop import MODEL as CARDIO
from medserve.faces.demo.interop import example_bundle, example_hook_request
from medserve.serving.fast_path import HotPathApp, match_hot_path

ENSEMBLE = "bc-ensemble"
SEQUENCE = "motif-seq"
IMAGE = "ct-lesion"
FHIR = "application/fhir+json"
MAX_BODY = 200_000  # MEDSERVE_MAX_BODY_BYTES of this module's server


# ---------------------------------------------------------------------------------------------
# The home and the server
# ---------------------------------------------------------------------------------------------


def build_home(path: Path) -> Path:
    """``breast-cancer`` v1 (production, evaluated) and v2 (staging); ``cardio-risk`` (a FHIR
    feature map, so a CDS Hooks service); an ensemble of breast-cancer v1 and v2; a k-mer
    sequence model; the committed demo CT lesion CNN."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medserve.core.registry.signature import infer_signature
    from medserve.faces.demo.data import breast_cancer_frame
    from medserve.faces.demo.interop import register_cardio_model
    from medserve.faces.demo.modalities import image_bundle_path
    from medserve.features.composition.register import register_ensemble
    from medserve.features.evaluation.run import evaluate_version
    from medserve.features.modalities.register import (
        register_image_bundle,
        register_sequence_model,
    )
    from medserve.features.modalities.sequence import KmerFeaturizer, KmerSpec
    from medserve.features.modalities.sequence_demo_data import sequences

    make_template(path)
    X, y = breast_cancer_frame()
    with registry_at(path) as registry:
        evaluate_version(
            registry,
            registry.store.get_version(MODEL, 1),
            X.assign(diagnosis=y.to_numpy()),
            label="diagnosis",
            dataset_name="breast-cancer-holdout",
            n_boot=20,
        )
        v2 = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
        registry.register(
            MODEL,
            v2.fit(X, y),
            sample=X,
            signature=infer_signature(X, range_margin=0.5),
            alias="staging",
        )
        register_cardio_model(registry)
        register_ensemble(
            registry,
            ENSEMBLE,
            {
                "members": [{"model": MODEL, "version": "1"}, {"model": MODEL, "version": "2"}],
                "combiner": "weighted_mean",
            },
            alias="production",
        )
        spec = KmerSpec(k=4)
        texts, labels = sequences(200)
        head = LogisticRegression(max_iter=2000).fit(KmerFeaturizer(spec).transform(texts), labels)
        register_sequence_model(registry, SEQUENCE, head, spec, texts[:50], alias="production")
        register_image_bundle(registry, IMAGE, image_bundle_path(), alias="production")
    return path


@dataclass
class Served:
    client: TestClient
    state: Any
    api: FastAPI
    home: Path
    admin: dict[str, str]

    def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        """A request with the admin's credential (``headers`` added to it)."""
        return self.client.request(
            method, path, headers={**self.admin, **(headers or {})}, **kwargs
        )

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.call("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.call("PUT", path, **kwargs)


def api_of(app: Any) -> FastAPI:
    """The FastAPI app inside ``create_app``'s result: under the extensions' middleware
    (outermost first), the fast path and the body limit."""
    while not isinstance(app, HotPathApp):
        app = app.app
    api = app.fallback
    while not isinstance(api, FastAPI):
        api = api.app
    return api


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = build_home(tmp_path_factory.mktemp("every-route") / "home")
    admin = create_key(home, ["admin"])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDSERVE_MAX_BODY_BYTES", str(MAX_BODY))
        env.setenv("MEDSERVE_MONITOR_FLUSH_INTERVAL_S", "0.05")  # outcomes find predictions soon
        env.delenv("MEDSERVE_AUDIT_FAILURE", raising=False)
        with serve(home, security=True) as (client, state):
            yield Served(client, state, api_of(client.app), home, admin)


# ---------------------------------------------------------------------------------------------
# What the app exposes
# ---------------------------------------------------------------------------------------------


def exposed_routes(api: FastAPI) -> set[tuple[str, str]]:
    """(method, path template) of every route, those of included routers too (FastAPI keeps an
    included router as one entry of ``api.routes``; ``iter_route_contexts`` flattens them as the
    OpenAPI generator does)."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    routes = list(flatten(api.routes)) if flatten is not None else list(api.routes)
    pairs: set[tuple[str, str]] = set()
    for route in routes:
        methods, path = getattr(route, "methods", None), getattr(route, "path", None)
        assert path, f"a route this test cannot enumerate: {route!r}"
        assert methods, f"a route without methods (a mount?): {route!r}"
        pairs |= {(method, path) for method in methods}
    return pairs


def concrete(path: str) -> str:
    """A request path for a template (every parameter filled in)."""
    for name in ("name", "version", "key_id", "service_id", "alert_id", "model_id", "alias"):
        path = path.replace("{" + name + "}", "x1")
    assert "{" not in path, path
    return path


FAST_PATH = {
    ("POST", "/v2/models/{name}/infer"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
    ("POST", "/v1/models/{name}/predict"),
    ("POST", "/v1/models/{name}/versions/{version}/predict"),
}


# ---------------------------------------------------------------------------------------------
# One case per route
# ---------------------------------------------------------------------------------------------

Case = Callable[[Served], None]
CASES: dict[tuple[str, str], Case] = {}


def covers(method: str, path: str) -> Callable[[Case], Case]:
    def register(case: Case) -> Case:
        assert (method, path) not in CASES, (method, path)
        CASES[(method, path)] = case
        return case

    return register


def feature_names(s: Served) -> list[str]:
    response = s.get(f"/v2/models/{MODEL}")
    assert response.status_code == 200, response.text
    return [t["name"] for t in response.json()["inputs"]]


def assert_classified(prediction: dict[str, Any], classes: set[str]) -> None:
    probabilities = prediction["probabilities"]
    assert set(probabilities) == classes
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction["label"] == max(probabilities, key=probabilities.get)


BC_CLASSES = {"benign", "malignant"}


# -- Open Inference Protocol v2 ---------------------------------------------------------------


@covers("GET", "/v2/health/live")
def _live(s: Served) -> None:
    response = s.client.get("/v2/health/live")  # an open path: no credential needed
    assert response.status_code == 200
    assert response.json() == {"live": True}
    assert response.headers["x-content-type-options"] == "nosniff"


@covers("GET", "/v2/health/ready")
def _ready(s: Served) -> None:
    response = s.client.get("/v2/health/ready")
    assert response.status_code == 200
    assert response.json() == {"ready": True}


@covers("GET", "/v2")
def _server_metadata(s: Served) -> None:
    response = s.get("/v2")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "medserve"
    assert body["version"] == __version__
    assert isinstance(body["extensions"], list)


@covers("GET", "/v2/models/{name}")
def _model_metadata(s: Served) -> None:
    response = s.get(f"/v2/models/{MODEL}")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == MODEL
    assert body["versions"] == ["1"]  # the production version
    assert [t["name"] for t in body["inputs"]] == list(records(1)[0])
    assert {t["datatype"] for t in body["inputs"]} == {"FP32"}
    assert body["outputs"]
    assert all({"name", "datatype", "shape"} <= set(t) for t in body["outputs"])


@covers("GET", "/v2/models/{name}/versions/{version}")
def _version_metadata(s: Served) -> None:
    for ref, number in (("staging", "2"), ("1", "1"), ("production", "1")):
        response = s.get(f"/v2/models/{MODEL}/versions/{ref}")
        assert response.status_code == 200, (ref, response.text)
        assert response.json()["name"] == MODEL
        assert response.json()["versions"] == [number]


@covers("GET", "/v2/models/{name}/ready")
def _model_ready(s: Served) -> None:
    response = s.get(f"/v2/models/{MODEL}/ready")
    assert response.status_code == 200
    assert response.json() == {"name": MODEL, "ready": True}


@covers("GET", "/v2/models/{name}/versions/{version}/ready")
def _version_ready(s: Served) -> None:
    response = s.get(f"/v2/models/{MODEL}/versions/2/ready")
    assert response.status_code == 200
    assert response.json() == {"name": MODEL, "ready": True}


def _v2_outputs(body: dict[str, Any]) -> dict[str, list[Any]]:
    return {t["name"]: t["data"] for t in body["outputs"]}


@covers("POST", "/v2/models/{name}/infer")
def _infer(s: Served) -> None:
    names = feature_names(s)
    rows = [[r[n] for n in names] for r in records(2)]
    tensor = {"name": "input", "shape": [2, len(names)], "datatype": "FP32"}
    body = {"id": "req-7", "inputs": [{**tensor, "data": rows}], "parameters": {"trace": "a"}}
    response = s.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"]  # answered by the fast path
    answer = response.json()
    assert answer["model_name"] == MODEL
    assert answer["model_version"] == "1"
    assert answer["id"] == "req-7"
    assert answer["parameters"] == {"trace": "a"}
    for output in answer["outputs"]:
        assert output["shape"][0] == 2
        assert {"name", "datatype", "shape", "data"} <= set(output)
    # Triton's binary tensor extension: a JSON header, then the raw little-endian tensor
    raw = np.asarray(rows, dtype="<f4").tobytes()
    header = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()
    binary = s.post(
        f"/v2/models/{MODEL}/infer",
        content=header + raw,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    assert binary.status_code == 200, binary.text
    by_json, by_binary = _v2_outputs(answer), _v2_outputs(binary.json())
    assert set(by_binary) == set(by_json)
    for name, data in by_json.items():
        if isinstance(data[0], str):
            assert by_binary[name] == data
        else:
            assert by_binary[name] == pytest.approx(data, abs=1e-5)


@covers("POST", "/v2/models/{name}/versions/{version}/infer")
def _infer_version(s: Served) -> None:
    names = feature_names(s)
    row = [records(1)[0][n] for n in names]
    body = {
        "inputs": [{"name": "input", "shape": [1, len(names)], "datatype": "FP32", "data": row}]
    }
    for ref, number in (("staging", "2"), ("2", "2"), ("1", "1")):
        response = s.post(f"/v2/models/{MODEL}/versions/{ref}/infer", json=body)
        assert response.status_code == 200, (ref, response.text)
        assert response.json()["model_version"] == number
        assert "id" not in response.json()


# -- records API and registry views -----------------------------------------------------------


@covers("POST", "/v1/models/{name}/predict")
def _predict(s: Served) -> None:
    response = s.post(
        f"/v1/models/{MODEL}/predict",
        json={"instances": records(3)},
        headers={"X-Request-ID": "every-route-predict"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "every-route-predict"
    body = response.json()
    assert (body["model"], body["version"]) == (MODEL, 1)
    assert body["request_id"] == "every-route-predict"
    assert len(body["predictions"]) == 3
    for prediction in body["predictions"]:
        assert_classified(prediction, BC_CLASSES)


@covers("POST", "/v1/models/{name}/versions/{version}/predict")
def _predict_version(s: Served) -> None:
    for ref, number in (("2", 2), ("staging", 2), ("1", 1), ("production", 1)):
        response = s.post(
            f"/v1/models/{MODEL}/versions/{ref}/predict", json={"instances": records(1)}
        )
        assert response.status_code == 200, (ref, response.text)
        assert (response.json()["model"], response.json()["version"]) == (MODEL, number)
        assert_classified(response.json()["predictions"][0], BC_CLASSES)


@covers("GET", "/v1/models")
def _list_models(s: Served) -> None:
    response = s.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert {m["name"] for m in body["models"]} == {MODEL, CARDIO, ENSEMBLE, SEQUENCE, IMAGE}
    assert body["next_page_token"] is None
    [bc] = [m for m in body["models"] if m["name"] == MODEL]
    assert bc["aliases"] == {"production": 1, "staging": 2}
    paged = s.get("/v1/models", params={"page_size": 2})
    assert paged.status_code == 200
    assert len(paged.json()["models"]) == 2
    assert paged.json()["next_page_token"]
    searched = s.get("/v1/models", params={"search": "cardio"}).json()["models"]
    assert [m["name"] for m in searched] == [CARDIO]


@covers("GET", "/v1/models/{name}")
def _get_model(s: Served) -> None:
    response = s.get(f"/v1/models/{MODEL}")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == MODEL
    assert body["aliases"] == {"production": 1, "staging": 2}
    versions = {v["version"]: v["aliases"] for v in body["versions"]}
    assert versions == {1: ["production"], 2: ["staging"]}


@covers("GET", "/v1/models/{name}/versions/{version}")
def _get_version(s: Served) -> None:
    response = s.get(f"/v1/models/{MODEL}/versions/staging")
    assert response.status_code == 200
    body = response.json()
    assert (body["model_name"], body["version"], body["aliases"]) == (MODEL, 2, ["staging"])
    assert len(body["artifact_sha256"]) == 64
    assert body["runtime"]
    assert s.get(f"/v1/models/{MODEL}/versions/1").json()["aliases"] == ["production"]


@covers("GET", "/v1/models/{name}/aliases/history")
def _alias_history(s: Served) -> None:
    response = s.get(f"/v1/models/{MODEL}/aliases/history")
    assert response.status_code == 200
    moves = {(e["alias"], e["from_version"], e["to_version"]) for e in response.json()["events"]}
    assert moves == {("production", None, 1), ("staging", None, 2)}
    staging = s.get(f"/v1/models/{MODEL}/aliases/history", params={"alias": "staging"})
    assert [e["alias"] for e in staging.json()["events"]] == ["staging"]


@covers("GET", "/v1/models/{name}/traffic/{alias}")
def _traffic(s: Served) -> None:
    response = s.get(f"/v1/models/{MODEL}/traffic/staging")
    assert response.status_code == 200
    assert response.json() == {
        "model": MODEL,
        "alias": "staging",
        "version": 2,
        "split": {"2": 100},
        "shadow": [],
    }


@covers("PUT", "/v1/models/{name}/traffic/{alias}")
def _traffic_change(s: Served) -> None:
    # staging is not gated; the same split again changes nothing served (an audited no-op)
    response = s.put(f"/v1/models/{MODEL}/traffic/staging", json={"split": {"2": 100}})
    assert response.status_code == 200
    assert response.json()["split"] == {"2": 100}
    bad = s.put(f"/v1/models/{MODEL}/traffic/staging", json={"split": {"x": 100}})
    assert bad.status_code == 400
    assert bad.json()["details"][0]["field"] == "split.x"


@covers("GET", "/v1/models/{name}/compare")
def _compare(s: Served) -> None:
    response = s.get(f"/v1/models/{MODEL}/compare", params={"hours": 1})
    assert response.status_code == 200
    body = response.json()
    assert (body["model"], body["alias"], body["traffic"]["version"]) == (MODEL, "production", 1)
    assert isinstance(body["versions"], list)
    assert body["shadows"] == []


@covers("GET", "/v1/served")
def _served(s: Served) -> None:
    response = s.get("/v1/served")
    assert response.status_code == 200
    body = response.json()
    served = {m["name"]: m["aliases"] for m in body["served"]}
    assert served[MODEL] == {"production": 1, "staging": 2}
    assert set(served) == {MODEL, CARDIO, ENSEMBLE, SEQUENCE, IMAGE}
    assert body["failures"] == []


# -- governance -------------------------------------------------------------------------------


@covers("GET", "/v1/models/{name}/versions/{version}/card")
def _card(s: Served) -> None:
    response = s.get(f"/v1/models/{MODEL}/versions/1/card")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    card = response.json()
    assert (card["model"], card["version"]) == (MODEL, 1)
    assert card["complete"] is False
    assert card["missing"]
    for html in (
        s.get(f"/v1/models/{MODEL}/versions/1/card", params={"format": "html"}),
        s.get(f"/v1/models/{MODEL}/versions/production/card", headers={"Accept": "text/html"}),
    ):
        assert html.status_code == 200
        assert html.headers["content-type"].startswith("text/html")
        assert "<html" in html.text.lower()
        assert MODEL in html.text


@covers("GET", "/v1/models/{name}/versions/{version}/evaluations")
def _evaluations(s: Served) -> None:
    response = s.get(f"/v1/models/{MODEL}/versions/production/evaluations")
    assert response.status_code == 200
    body = response.json()
    assert (body["model"], body["version"]) == (MODEL, 1)
    [evaluation] = body["evaluations"]
    assert evaluation["dataset_name"] == "breast-cancer-holdout"
    assert evaluation["result"]["task"] == "binary"
    assert 0.9 < evaluation["result"]["metrics"]["auroc"]["value"] <= 1.0
    assert s.get(f"/v1/models/{MODEL}/versions/2/evaluations").json()["evaluations"] == []


@covers("GET", "/v1/models/{name}/versions/{version}/report")
def _report(s: Served) -> None:
    response = s.get(f"/v1/models/{MODEL}/versions/1/report")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert f"{MODEL} v1: local evaluation" in response.text
    missing = s.get(f"/v1/models/{MODEL}/versions/2/report")  # never evaluated
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"


@covers("GET", "/v1/models/{name}/versions/{version}/gate")
def _gate(s: Served) -> None:
    response = s.get(f"/v1/models/{MODEL}/versions/staging/gate")
    assert response.status_code == 200
    body = response.json()
    assert (body["model"], body["version"]) == (MODEL, 2)
    assert body["passed"] is False  # no card statements, no evaluation
    assert any(p.startswith("card incomplete") for p in body["problems"])


# -- monitoring -------------------------------------------------------------------------------


@covers("GET", "/v1/models/{name}/monitoring")
def _monitoring(s: Served) -> None:
    alert_id = fire_alert(s.home, ENSEMBLE)
    response = s.get(f"/v1/models/{ENSEMBLE}/monitoring", params={"runs": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == ENSEMBLE
    assert {"psi_warn", "psi_alert", "threshold"} <= set(body["config"])
    assert isinstance(body["runs"], list)
    assert any(r["metric"] == "psi_max" for r in body["rules"])
    [alert] = [a for a in body["alerts"] if a["id"] == alert_id]
    assert alert["state"] == "firing"


@covers("GET", "/v1/models/{name}/versions/{version}/importance")
def _importance(s: Served) -> None:
    response = s.get(f"/v1/models/{MODEL}/versions/staging/importance")
    assert response.status_code == 200
    body = response.json()
    assert (body["model"], body["version"]) == (MODEL, 2)
    assert set(body["features"]) == set(records(1)[0])
    assert all(v >= 0 for v in body["features"].values())
    assert body["method"]


def _assert_explained(body: dict[str, Any], version: int) -> None:
    assert (body["model"], body["version"]) == (MODEL, version)
    assert body["target"] == "malignant"
    [row] = body["explanations"]
    assert set(row["attributions"]) == set(records(1)[0])
    additive = row["base_value"] + sum(row["attributions"].values())
    assert additive == pytest.approx(row["prediction"], rel=1e-4, abs=1e-4)


@covers("POST", "/v1/models/{name}/explain")
def _explain(s: Served) -> None:
    response = s.post(f"/v1/models/{MODEL}/explain", json={"instances": records(1)})
    assert response.status_code == 200, response.text
    _assert_explained(response.json(), 1)


@covers("POST", "/v1/models/{name}/versions/{version}/explain")
def _explain_version(s: Served) -> None:
    body = {"instances": records(1), "class": "malignant"}
    response = s.post(f"/v1/models/{MODEL}/versions/staging/explain", json=body)
    assert response.status_code == 200, response.text
    _assert_explained(response.json(), 2)


@covers("POST", "/v1/outcomes")
def _outcomes(s: Served) -> None:
    predicted = s.post(
        f"/v1/models/{MODEL}/predict",
        json={"instances": records(2)},
        headers={"X-Request-ID": "every-route-outcome", "X-Patient-ID": "MRN-77"},
    )
    assert predicted.status_code == 200, predicted.text
    now = datetime.now(UTC)
    by_id = {"prediction_id": "every-route-outcome-1", "outcome": "malignant"}
    by_patient = {
        "patient_id": "MRN-77",
        "model": MODEL,
        "start": (now - timedelta(hours=1)).isoformat(),
        "end": (now + timedelta(hours=1)).isoformat(),
        "outcome": "malignant",
    }

    def matched() -> dict[str, Any] | None:
        """Once the prediction log has written the prediction (its writer flushes often)."""
        response = s.post("/v1/outcomes", json={"outcomes": [by_id, by_patient]})
        assert response.status_code == 200, response.text
        return response.json() if response.json()["matched"] != [0, 0] else None

    body = wait_for(matched, timeout_s=30, what="the prediction in the prediction log")
    assert body == {"matched": [1, 2], "labelled": 3, "unmatched": []}


@covers("POST", "/v1/patients/erase")
def _erase(s: Served) -> None:
    patient = "MRN-EVERY-ROUTE-ERASED"
    predicted = s.post(
        f"/v1/models/{MODEL}/predict",
        json={"instances": records(2)},
        headers={"X-Patient-ID": patient},
    )
    assert predicted.status_code == 200, predicted.text
    response = s.post("/v1/patients/erase", json={"patient_id": patient, "reason": "case"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["erased"] is True
    assert body["predictions"] == 2  # the endpoint writes this worker's pending log first
    assert patient not in response.text


@covers("POST", "/v1/alerts/{alert_id}/acknowledge")
def _acknowledge(s: Served) -> None:
    alert_id = fire_alert(s.home, SEQUENCE)
    response = s.post(f"/v1/alerts/{alert_id}/acknowledge", json={"note": "seen"})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == alert_id
    assert response.json()["state"] == "acknowledged"
    alerts = s.get(f"/v1/models/{SEQUENCE}/monitoring").json()["alerts"]
    assert [a["state"] for a in alerts if a["id"] == alert_id] == ["acknowledged"]


# -- CDS Hooks --------------------------------------------------------------------------------


@covers("GET", "/cds-services")
def _discovery(s: Served) -> None:
    response = s.get("/cds-services")
    assert response.status_code == 200
    [service] = response.json()["services"]  # the one model whose FHIR map declares a hook
    assert service["id"] == CARDIO
    assert service["hook"] == "patient-view"
    assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"


def _hook_card(s: Served) -> dict[str, Any]:
    response = s.post(f"/cds-services/{CARDIO}", json=example_hook_request())
    assert response.status_code == 200, response.text
    [card] = response.json()["cards"]
    return dict(card)


@covers("POST", "/cds-services/{service_id}")
def _hook_call(s: Served) -> None:
    card = _hook_card(s)
    assert card["indicator"] in {"info", "warning", "critical"}
    assert card["summary"]
    assert "url" not in card["source"]  # absolute links only with MEDSERVE_PUBLIC_URL
    unknown = s.post("/cds-services/no-such-service", json=example_hook_request())
    assert unknown.status_code == 404
    assert set(unknown.json()) >= {"error", "code"}


@covers("POST", "/cds-services/{service_id}/feedback")
def _hook_feedback(s: Served) -> None:
    card = _hook_card(s)["uuid"]
    feedback = {
        "feedback": [
            {
                "card": card,
                "outcome": "accepted",
                "acceptedSuggestions": [],
                "outcomeTimestamp": datetime.now(UTC).isoformat(),
            }
        ]
    }
    response = s.post(f"/cds-services/{CARDIO}/feedback", json=feedback)
    assert response.status_code == 200, response.text
    assert response.json() == {"stored": 1}


@covers("GET", "/v1/models/{name}/cds-feedback")
def _feedback_summary(s: Served) -> None:
    card = _hook_card(s)["uuid"]
    overridden = {
        "feedback": [
            {
                "card": card,
                "outcome": "overridden",
                "overrideReason": {"reason": {"code": "disagree", "display": "Disagree"}},
                "outcomeTimestamp": datetime.now(UTC).isoformat(),
            }
        ]
    }
    assert s.post(f"/cds-services/{CARDIO}/feedback", json=overridden).status_code == 200
    response = s.get(f"/v1/models/{CARDIO}/cds-feedback")
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == CARDIO
    [v1] = body["versions"]
    assert v1["version"] == 1
    assert v1["cards"] >= 1
    assert v1["overridden"] >= 1
    assert any(r["code"] == "disagree" for r in v1["override_reasons"])


# -- security ---------------------------------------------------------------------------------


@covers("GET", "/v1/audit")
def _audit(s: Served) -> None:
    since = datetime.now(UTC) - timedelta(minutes=5)
    change = s.put(
        f"/v1/security/tenants/{IMAGE}",
        json={"tenant": None},
        headers={"X-Request-ID": "every-route-audit"},
    )
    assert change.status_code == 200  # a change: audited before the answer
    response = s.get("/v1/audit", params={"since": since.isoformat(), "limit": 1000})
    assert response.status_code == 200
    entries = response.json()["entries"]
    stored = stored_request_id("every-route-audit", None, load_or_create_salt(s.home))
    [entry] = [e for e in entries if e["request_id"] == stored]  # a caller's id: keyed
    assert "every-route-audit" not in response.text
    assert entry["action"] == "admin"
    assert entry["model"] == IMAGE
    assert entry["outcome"] == 200
    assert entry["actor"] == "key:test"
    assert entry["detail"] == "PUT /v1/security/tenants/{name}"
    first = s.get("/v1/audit", params={"limit": 1}).json()
    assert len(first["entries"]) == 1
    assert first["next_after_seq"] == first["entries"][0]["seq"]
    after = s.get("/v1/audit", params={"after_seq": first["next_after_seq"], "limit": 1}).json()
    assert after["entries"][0]["seq"] > first["next_after_seq"]


@covers("GET", "/v1/security/keys")
def _list_keys(s: Served) -> None:
    response = s.get("/v1/security/keys")
    assert response.status_code == 200
    keys = response.json()["keys"]
    admin_id = s.admin["Authorization"].split("_")[1]  # msk_<key id>_<secret>
    [admin] = [k for k in keys if k["key_id"] == admin_id]
    assert admin["roles"] == ["admin"]
    assert admin["state"] == "active"
    assert all("token" not in k and "secret" not in k for k in keys)
    assert s.admin["Authorization"].split(" ")[1] not in response.text


def _issue(s: Served, **body: Any) -> dict[str, Any]:
    response = s.post("/v1/security/keys", json={"name": "issued", "roles": ["app"], **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


@covers("POST", "/v1/security/keys")
def _create_key(s: Served) -> None:
    issued = _issue(s, models=[MODEL], rate_limit=1000)
    assert issued["token"].startswith(f"msk_{issued['key_id']}_")
    assert (issued["roles"], issued["models"], issued["rate_limit"]) == (["app"], [MODEL], 1000)
    assert issued["state"] == "active"
    token = {"Authorization": f"Bearer {issued['token']}"}
    ok = s.client.post(f"/v1/models/{MODEL}/predict", json={"instances": records(1)}, headers=token)
    assert ok.status_code == 200
    other = s.client.post(
        f"/v1/models/{ENSEMBLE}/predict", json={"instances": records(1)}, headers=token
    )
    assert other.status_code == 403  # granted one model only


@covers("DELETE", "/v1/security/keys/{key_id}")
def _revoke_key(s: Served) -> None:
    issued = _issue(s)
    token = {"Authorization": f"Bearer {issued['token']}"}
    assert s.client.get(f"/v2/models/{MODEL}/ready", headers=token).status_code == 200
    response = s.call("DELETE", f"/v1/security/keys/{issued['key_id']}")
    assert response.status_code == 200
    assert response.json()["key_id"] == issued["key_id"]
    assert response.json()["state"] == "revoked"
    refused = s.client.get(f"/v2/models/{MODEL}/ready", headers=token)  # the very next request
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthenticated"

    def revocation() -> dict[str, Any] | None:  # the change's own entry, with its actor
        entries = s.call("GET", "/v1/audit", params={"limit": 1000}).json()["entries"]
        found = [
            e
            for e in entries
            if e["action"] == "security.key_revoked" and issued["key_id"] in e["detail"]
        ]
        return found[0] if found else None

    entry = wait_for(revocation, timeout_s=30, what="the revocation in the audit trail")
    assert entry["actor"] == "key:test"  # the admin who revoked it, not "cli"


@covers("PUT", "/v1/security/tenants/{name}")
def _assign_tenant(s: Served) -> None:
    clinic = _issue(s, roles=["developer"], tenant="clinic-a")
    token = {"Authorization": f"Bearer {clinic['token']}"}

    def visible() -> list[str]:
        response = s.client.get("/v1/models", headers=token)
        assert response.status_code == 200
        return [m["name"] for m in response.json()["models"]]

    assert visible() == []  # a tenant's key sees only its tenant's models
    response = s.put(f"/v1/security/tenants/{SEQUENCE}", json={"tenant": "clinic-a"})
    assert response.status_code == 200
    assert response.json() == {"model": SEQUENCE, "tenant": "clinic-a"}
    assert visible() == [SEQUENCE]
    cleared = s.put(f"/v1/security/tenants/{SEQUENCE}", json={"tenant": None})
    assert cleared.json() == {"model": SEQUENCE, "tenant": None}
    assert visible() == []


# -- language models (/openai/v1; this home has none: their calls are in tests/unit/llm) ------


def _openai_error(response: Any, status: int, param: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["param"] == param


@covers("POST", "/openai/v1/chat/completions")
def _chat_completions(s: Served) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    _openai_error(s.post("/openai/v1/chat/completions", json=body), 400, None)  # tabular
    _openai_error(s.post("/openai/v1/chat/completions", json={**body, "n": 2}), 400, "n")


@covers("POST", "/openai/v1/completions")
def _completions(s: Served) -> None:
    body = {"model": "nobody", "prompt": "hi"}
    _openai_error(s.post("/openai/v1/completions", json=body), 404, None)


@covers("POST", "/openai/v1/embeddings")
def _embeddings(s: Served) -> None:
    body = {"model": MODEL, "input": ["hi"], "encoding_format": "hex"}
    _openai_error(s.post("/openai/v1/embeddings", json=body), 400, "encoding_format")


@covers("GET", "/openai/v1/models")
def _openai_models(s: Served) -> None:
    response = s.get("/openai/v1/models")
    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": []}  # no language model here


@covers("GET", "/openai/v1/models/{model_id}")
def _openai_model(s: Served) -> None:
    _openai_error(s.get(f"/openai/v1/models/{MODEL}@1"), 404, None)


@covers("GET", "/openai/v1/usage")
def _openai_usage(s: Served) -> None:
    response = s.get("/openai/v1/usage")
    assert response.status_code == 200
    body = response.json()
    assert body["key_id"] == s.admin["Authorization"].split("_")[1]
    assert body["days"] == []


@covers("POST", "/v1/models/{name}/fhir-answer")
def _fhir_answer(s: Served) -> None:
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Condition"}}]}
    body = {"bundle": bundle, "question": "which conditions?"}
    _openai_error(s.post("/v1/models/nobody/fhir-answer", json=body), 404, None)
    _openai_error(s.post(f"/v1/models/{MODEL}/fhir-answer", json=body), 404, None)  # tabular
    _openai_error(s.post(f"/v1/models/{MODEL}/fhir-answer", json={**body, "top_k": 0}), 400, None)


@covers("PUT", "/v1/security/keys/{key_id}/llm")
def _put_key_llm(s: Served) -> None:
    issued = _issue(s)
    settings = {"phi_policy": "block", "tokens_per_day": 10_000}
    response = s.put(f"/v1/security/keys/{issued['key_id']}/llm", json=settings)
    assert response.status_code == 200, response.text
    assert response.json()["phi_policy"] == "block"
    assert response.json()["tokens_per_day"] == 10_000


@covers("GET", "/v1/security/keys/{key_id}/llm")
def _get_key_llm(s: Served) -> None:
    issued = _issue(s)
    response = s.get(f"/v1/security/keys/{issued['key_id']}/llm")
    assert response.status_code == 200
    assert response.json()["phi_policy"] is None
    assert response.json()["phi_allow"] is False


@covers("GET", "/v1/security/keys/{key_id}/usage")
def _key_usage(s: Served) -> None:
    issued = _issue(s)
    response = s.get(f"/v1/security/keys/{issued['key_id']}/usage")
    assert response.status_code == 200
    assert response.json()["current"]["requests_today"] == 0


# -- operations and documentation -------------------------------------------------------------


def _rows_total(s: Served, model: str) -> float:
    response = s.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "medserve_rows_total" and sample.labels.get("model") == model:
                return float(sample.value)
    return 0.0


@covers("GET", "/metrics")
def _metrics(s: Served) -> None:
    response = s.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(response.text)}
    assert {"medserve_requests", "medserve_request_duration_seconds", "medserve_rows"} <= names
    before = _rows_total(s, ENSEMBLE)
    assert s.post(f"/v1/models/{ENSEMBLE}/predict", json={"instances": records(3)}).is_success
    assert _rows_total(s, ENSEMBLE) == before + 3


@covers("GET", "/openapi.json")
def _openapi(s: Served) -> None:
    response = s.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["info"]["title"] == "medserve"
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    docs_routes = {"/openapi.json"}
    assert documented == {r for r in exposed_routes(s.api) if r[1] not in docs_routes}
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "Error" in document["components"]["schemas"]
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]["responses"]
    assert {"200", "401", "413", "415", "422"} <= set(infer)
    assert document["paths"]["/v2/health/live"]["get"]["security"] == []
    assert response.headers["content-security-policy"].startswith("default-src 'none'")


def _head(s: Served, path: str) -> None:
    get, head = s.get(path), s.call("HEAD", path)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


@covers("HEAD", "/openapi.json")
def _openapi_head(s: Served) -> None:
    _head(s, "/openapi.json")


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


def test_every_exposed_route_has_a_case(served: Served) -> None:
    exposed = exposed_routes(served.api)
    # the fast path serves exactly its four endpoints, each also declared for the OpenAPI
    hot = {(m, p) for m, p in exposed if match_hot_path(m, concrete(p)) is not None}
    assert hot == FAST_PATH
    exposed |= FAST_PATH
    assert set(CASES) - exposed == set(), "cases for routes the app no longer exposes"
    assert exposed - set(CASES) == set(), "routes without a case in this module"


@pytest.mark.parametrize("route", sorted(CASES), ids=lambda r: f"{r[0]} {r[1]}")
def test_route(served: Served, route: tuple[str, str]) -> None:
    CASES[route](served)


# -- every extension ---------------------------------------------------------------------------

# What each installed extension contributes, and where this module exercises it.
EXTENSIONS = {
    "security": "middleware (auth, headers, audit), /v1/audit, /v1/security/* (cases above)",
    "governance": "card, evaluations, report, gate (cases above)",
    "monitoring": "monitoring, importance, explain, outcomes via the prediction log, alerts",
    "interop": "CDS Hooks (cases above), FHIR on records predict, CORS: test_interop_*",
    "modalities": "text/plain and DICOM on records predict: test_modalities_*",
    "composition": "the ensemble flavor: test_composition_ensemble_is_served",
    "explain": "global importance on registration: test_explain_importance_of_every_version",
    "privacy": "a patient's erasure (case above; tests/http/test_erasure_http.py)",
    "llm": "/openai/v1 and key settings (cases above; tests/unit/llm, test_openai_*)",
    "llm-grounding": "fhir-answer (case above; tests/unit/llm/test_grounding.py)",
    "console": "/ui and the bundled /docs: test_console_and_docs (tests/contract/browser)",
    "traffic": "traffic splits and compare (cases above; tests/http/test_traffic_http.py)",
    "ray": "inference on Ray deployments, off under uvicorn: tests/integration/test_ray_backend.py",
    "grpc": "OIP v2 over gRPC when --grpc-port is set: tests/contract/test_grpc_*.py",
}


def test_every_installed_extension_is_exercised() -> None:
    assert {e.name for e in extensions()} == set(EXTENSIONS)


def test_console_and_docs(served: Served) -> None:
    """The console extension's wrapper: /docs is Swagger UI from bundled assets under a CSP
    (no CDN), /ui asks a browser to sign in, / leads to /ui/ (the browser tests go further)."""
    docs = served.client.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "/docs/assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert "script-src 'self'" in docs.headers["content-security-policy"]
    assert docs.headers["x-frame-options"] == "DENY"
    bundle = served.client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert "SwaggerUIBundle" in bundle.text
    ui = served.client.get("/ui/", follow_redirects=False)
    assert ui.status_code == 303
    assert ui.headers["location"].startswith("/ui/login")
    assert served.client.get("/", follow_redirects=False).headers["location"] == "/ui/"


def test_interop_fhir_in_and_risk_assessment_out(served: Served) -> None:
    response = served.post(
        f"/v1/models/{CARDIO}/predict",
        params={"explain": "false"},
        content=json.dumps(example_bundle()),
        headers={"Content-Type": FHIR, "Accept": FHIR},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR)
    bundle = response.json()
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "collection")
    [entry] = bundle["entry"]
    assessment = entry["resource"]
    assert assessment["resourceType"] == "RiskAssessment"
    assert assessment["subject"] == {"reference": "Patient/example-1"}
    assert 0.0 <= assessment["prediction"][0]["probabilityDecimal"] <= 1.0
    plain = served.post(
        f"/v1/models/{CARDIO}/predict",
        content=json.dumps(example_bundle()),
        headers={"Content-Type": FHIR},
    )
    assert plain.status_code == 200
    probability = plain.json()["predictions"][0]["probabilities"]["1"]
    assert assessment["prediction"][0]["probabilityDecimal"] == pytest.approx(probability, abs=1e-5)


def test_interop_cors_preflight_of_cds_services(served: Served) -> None:
    response = served.client.options(
        f"/cds-services/{CARDIO}",
        headers={"Origin": "https://ehr.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200  # answered before authentication: no credential
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    discovery = served.get("/cds-services", headers={"Origin": "https://ehr.example"})
    assert discovery.headers["access-control-allow-origin"] == "*"
    api = served.get("/v1/models", headers={"Origin": "https://ehr.example"})
    assert "access-control-allow-origin" not in api.headers  # CORS for CDS Hooks only


def test_modalities_fasta_to_a_sequence_model(served: Served) -> None:
    fasta = b">one\nACGTACGTGATTACAGACGTACGT\n>two\nTTTTCCCCAAAAGGGGTTTTCCCC\n"
    response = served.post(
        f"/v1/models/{SEQUENCE}/predict", content=fasta, headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == (SEQUENCE, 1)
    assert len(body["predictions"]) == 2
    for prediction in body["predictions"]:
        assert_classified(prediction, {"background", "motif"})
    tabular = served.post(
        f"/v1/models/{MODEL}/predict", content=b"a note", headers={"Content-Type": "text/plain"}
    )
    assert tabular.status_code == 415
    assert tabular.json()["code"] == "unsupported_media_type"


def test_modalities_dicom_to_an_image_model(served: Served) -> None:
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    dicom = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    response = served.post(
        f"/v1/models/{IMAGE}/predict",
        params={"explain": "false"},
        content=dicom,
        headers={"Content-Type": "application/dicom"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == (IMAGE, 1)
    [prediction] = body["predictions"]
    assert_classified(prediction, {"lesion", "no_lesion"})
    assert "explanation" not in prediction
    assert body["input"]["Modality"] == "CT"
    assert body["input"]["PatientIdentityRemoved"] == "YES"


def test_composition_ensemble_is_served(served: Served) -> None:
    response = served.post(f"/v1/models/{ENSEMBLE}/predict", json={"instances": records(1)})
    assert response.status_code == 200, response.text
    [prediction] = response.json()["predictions"]
    assert_classified(prediction, BC_CLASSES)
    members = prediction["members"]
    assert [(m["model"], m["version"]) for m in members] == [(MODEL, 1), (MODEL, 2)]
    for label, probability in prediction["probabilities"].items():
        total = sum(m["contribution"][label] for m in members)
        assert total == pytest.approx(probability, abs=1e-5)


def test_explain_importance_of_every_version(served: Served) -> None:
    """The explain extension computes global importance when monitoring has profiled a version
    (a registry event), for every version registered with a sample."""
    for version in (1, 2):
        response = served.get(f"/v1/models/{MODEL}/versions/{version}/importance")
        assert response.status_code == 200, response.text
        assert response.json()["version"] == version
    # an ensemble registered without a sample is never profiled, so never explained globally
    without_sample = served.get(f"/v1/models/{ENSEMBLE}/versions/1/importance")
    assert without_sample.status_code == 404
    assert without_sample.json()["code"] == "not_found"


def test_a_free_text_model_is_explained_through_its_media_type_not_the_explain_route(
    served: Served,
) -> None:
    """The explain route's explainers perturb values; a sequence (free text) model is explained
    by occlusion on its text/plain predict: the route says so with a 400, not a 500."""
    response = served.post(
        f"/v1/models/{SEQUENCE}/explain", json={"instances": [{"sequence": "ACGTACGTAC"}]}
    )
    assert response.status_code == 400, response.text
    assert "text/plain" in response.json()["error"]

"""The HTTP surface against a real server process on loopback, over the demo models."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support import ServerProcess

from medserve.faces.demo import demo_models

pytestmark = pytest.mark.usefixtures("demo_server")


@pytest.fixture(scope="module")
def fitted() -> dict[str, Any]:
    """The demo estimators refitted with the demo's seeds: the served answers must match them."""
    models = {}
    for demo in demo_models():
        demo.estimator.fit(demo.frame, demo.target)
        models[demo.name] = demo
    return models


def post(server: ServerProcess, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", server.headers)
    return httpx.post(f"{server.url}{path}", json=body, timeout=10, **kwargs)


def rows(demo: Any, n: int) -> list[dict[str, float]]:
    return [
        {k: float(v) for k, v in r.items()} for r in demo.frame.iloc[:n].to_dict(orient="records")
    ]


def test_health_and_server_metadata(demo_server: ServerProcess) -> None:
    assert httpx.get(f"{demo_server.url}/v2/health/live", headers=demo_server.headers).json() == {
        "live": True
    }
    assert (
        httpx.get(f"{demo_server.url}/v2/health/ready", headers=demo_server.headers).status_code
        == 200
    )
    meta = httpx.get(f"{demo_server.url}/v2", headers=demo_server.headers).json()
    assert meta["name"] == "medserve"
    assert "version" in meta


def test_model_metadata_by_alias_and_number(demo_server: ServerProcess) -> None:
    by_alias = httpx.get(
        f"{demo_server.url}/v2/models/breast-cancer", headers=demo_server.headers
    ).json()
    assert by_alias["name"] == "breast-cancer"
    assert len(by_alias["inputs"]) == 30
    assert by_alias["inputs"][0] == {
        "name": "mean radius",
        "datatype": "FP32",
        "shape": [-1],
        "parameters": by_alias["inputs"][0]["parameters"],
    }
    assert {o["name"] for o in by_alias["outputs"]} == {"label", "probabilities"}
    assert "production" in by_alias["parameters"]["aliases"]
    number = by_alias["versions"][0]
    by_number = httpx.get(
        f"{demo_server.url}/v2/models/breast-cancer/versions/{number}", headers=demo_server.headers
    ).json()
    assert by_number["inputs"] == by_alias["inputs"]
    ready = httpx.get(
        f"{demo_server.url}/v2/models/breast-cancer/versions/production/ready",
        headers=demo_server.headers,
    )
    assert ready.status_code == 200
    assert ready.json()["ready"] is True


def test_v2_matrix_infer_matches_sklearn(
    demo_server: ServerProcess, fitted: dict[str, Any]
) -> None:
    demo = fitted["breast-cancer-rf"]
    X = demo.frame.iloc[:5].to_numpy(dtype=np.float32)
    body = {
        "id": "abc-123",
        "parameters": {"trace": "t1"},
        "inputs": [
            {
                "name": "input",
                "shape": list(X.shape),
                "datatype": "FP32",
                "data": X.ravel().tolist(),
            }
        ],
    }
    response = post(demo_server, "/v2/models/breast-cancer-rf/infer", body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["id"] == "abc-123"
    assert out["model_name"] == "breast-cancer-rf"
    parameters = out["parameters"]
    assert parameters["trace"] == "t1"  # the caller's, with the label's operating point
    tensors = {t["name"]: t for t in out["outputs"]}
    assert tensors["label"]["datatype"] == "BYTES"
    probs = np.asarray(tensors["probabilities"]["data"]).reshape(tensors["probabilities"]["shape"])
    np.testing.assert_allclose(probs, demo.estimator.predict_proba(demo.frame.iloc[:5]), atol=1e-5)
    assert tensors["label"]["data"] == _at_threshold(
        demo.estimator, probs, parameters["threshold"], parameters["positive_class"]
    )


def _at_threshold(
    estimator: Any, probabilities: np.ndarray, threshold: float, positive: str
) -> list[str]:
    """The labels the card's operating threshold gives (not scikit-learn's argmax)."""
    classes = [str(c) for c in estimator.classes_]
    i = classes.index(positive)
    other = classes[1 - i]
    return [positive if p[i] >= threshold else other for p in np.asarray(probabilities)]


def test_v2_per_feature_tensors_and_output_selection(
    demo_server: ServerProcess, fitted: dict[str, Any]
) -> None:
    demo = fitted["diabetes-progression"]
    frame = demo.frame.iloc[:3]
    inputs = [
        {"name": col, "shape": [3], "datatype": "FP64", "data": frame[col].tolist()}
        for col in frame.columns
    ]
    body = {"inputs": inputs, "outputs": [{"name": "value"}]}
    response = post(demo_server, "/v2/models/diabetes-progression/versions/production/infer", body)
    assert response.status_code == 200, response.text
    (tensor,) = response.json()["outputs"]
    assert tensor["name"] == "value"
    np.testing.assert_allclose(tensor["data"], demo.estimator.predict(frame), rtol=1e-4)
    bad = post(
        demo_server,
        "/v2/models/diabetes-progression/infer",
        {"inputs": inputs, "outputs": [{"name": "nope"}]},
    )
    assert bad.status_code == 400
    assert "outputs[0].name" in bad.json()["error"]


def test_records_predict_matches_sklearn(
    demo_server: ServerProcess, fitted: dict[str, Any]
) -> None:
    demo = fitted["breast-cancer"]
    response = post(demo_server, "/v1/models/breast-cancer/predict", {"instances": rows(demo, 4)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "breast-cancer"
    assert isinstance(body["version"], int)
    expected = demo.estimator.predict_proba(demo.frame.iloc[:4])
    classes = list(demo.estimator.classes_)
    point = body["threshold"]  # the label follows the version's operating threshold
    labels = _at_threshold(demo.estimator, expected, point["value"], point["positive_class"])
    for pred, exp, label in zip(body["predictions"], expected, labels, strict=True):
        assert pred["label"] == label
        np.testing.assert_allclose([pred["probabilities"][c] for c in classes], exp, atol=1e-5)


def test_records_validation_lists_every_problem(
    demo_server: ServerProcess, fitted: dict[str, Any]
) -> None:
    instances = rows(fitted["breast-cancer"], 3)
    del instances[0]["mean radius"]
    instances[1]["mean texture"] = "high"
    instances[2]["mean area"] = 1e9
    instances[2]["shoe size"] = 42.0
    response = post(demo_server, "/v1/models/breast-cancer/predict", {"instances": instances})
    assert response.status_code == 422
    problems = {(d["row"], d["field"], d["rule"]) for d in response.json()["details"]}
    assert problems == {
        (0, "mean radius", "required"),
        (1, "mean texture", "type"),
        (2, "mean area", "maximum"),
        (2, "shoe size", "unknown_field"),
    }
    # The server keeps serving after bad input.
    assert (
        post(
            demo_server,
            "/v1/models/breast-cancer/predict",
            {"instances": rows(fitted["breast-cancer"], 1)},
        ).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/v2/models/no-such-model/infer", "no-such-model"),
        ("/v2/models/breast-cancer/versions/99/infer", "99"),
        ("/v2/models/breast-cancer/versions/canary/infer", "canary"),
        ("/v1/models/no-such-model/predict", "no-such-model"),
    ],
)
def test_unknown_model_version_alias_is_404(
    demo_server: ServerProcess, path: str, needle: str
) -> None:
    response = post(demo_server, path, {"inputs": []})
    assert response.status_code == 404
    assert needle in response.json()["error"]


def test_malformed_json_and_wrong_content_type(demo_server: ServerProcess) -> None:
    url = f"{demo_server.url}/v1/models/breast-cancer/predict"
    broken = httpx.post(
        url,
        content=b'{"instances": [',
        headers={**demo_server.headers, "content-type": "application/json"},
    )
    assert broken.status_code == 400
    assert "malformed JSON" in broken.json()["error"]
    wrong = httpx.post(
        url, content=b"instances=1", headers={**demo_server.headers, "content-type": "text/plain"}
    )
    assert wrong.status_code == 415
    assert "application/json" in wrong.json()["error"]


def test_body_size_limit(demo_server: ServerProcess) -> None:
    big = json.dumps({"instances": [{"x": "a" * 1_100_000}]}).encode()
    response = httpx.post(
        f"{demo_server.url}/v1/models/breast-cancer/predict",
        content=big,
        headers={**demo_server.headers, "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert (
        httpx.get(f"{demo_server.url}/v2/health/ready", headers=demo_server.headers).status_code
        == 200
    )


def test_v2_protocol_errors_name_the_field(demo_server: ServerProcess) -> None:
    cases = [
        (
            {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP99", "data": [0] * 30}]},
            "inputs[0].datatype",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [0] * 29}]},
            "inputs[0].data",
        ),
        (
            {"inputs": [{"name": "input", "shape": [1, 29], "datatype": "FP32", "data": [0] * 29}]},
            "inputs[0].shape",
        ),
        ({"inputs": "nope"}, "inputs"),
    ]
    for body, field in cases:
        response = post(demo_server, "/v2/models/breast-cancer/infer", body)
        assert response.status_code == 400, body
        assert field in response.json()["error"]


def test_registry_views_and_openapi(demo_server: ServerProcess) -> None:
    listing = httpx.get(f"{demo_server.url}/v1/models", headers=demo_server.headers).json()
    names = {m["name"]: m for m in listing["models"]}
    assert {"breast-cancer", "breast-cancer-rf", "diabetes-progression"} <= set(names)
    assert "production" in names["breast-cancer"]["aliases"]
    detail = httpx.get(
        f"{demo_server.url}/v1/models/breast-cancer/versions/production",
        headers=demo_server.headers,
    ).json()
    assert detail["runtime"] == "onnxruntime"
    assert detail["signature"]["inputs"][0]["name"] == "mean radius"
    spec = httpx.get(f"{demo_server.url}/openapi.json", headers=demo_server.headers).json()
    assert "/v2/models/{name}/infer" in spec["paths"]
    assert "/v1/models/{name}/predict" in spec["paths"]
    assert httpx.get(f"{demo_server.url}/docs", headers=demo_server.headers).status_code == 200


def test_metrics_are_labelled_by_model_and_version(
    demo_server: ServerProcess, fitted: dict[str, Any]
) -> None:
    post(
        demo_server,
        "/v1/models/breast-cancer/predict",
        {"instances": rows(fitted["breast-cancer"], 2)},
    )
    text = httpx.get(f"{demo_server.url}/metrics", headers=demo_server.headers).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ok = [
        s
        for s in families["medserve_requests"].samples
        if s.name == "medserve_requests_total"
        and s.labels["model"] == "breast-cancer"
        and s.labels["protocol"] == "records"
        and s.labels["status"] == "200"
    ]
    assert ok
    assert ok[0].labels["version"].isdigit()
    assert ok[0].value >= 1
    assert "medserve_request_duration_seconds" in families
    assert "medserve_batch_size_rows" in families

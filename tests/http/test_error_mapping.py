"""How errors reach HTTP clients, in process (``serving/http_errors.py``, the security middleware
and the fast path): the status, the ``{"error", "code"[, "details"]}`` body and the headers each
status requires (WWW-Authenticate, Allow, Retry-After), on FastAPI routes, extension routes and
the prediction fast path alike."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.unit.serving.inprocess_app import (
    MODEL,
    create_key,
    make_template,
    records,
    serve,
)

MAX_BODY = 20_000  # MEDSERVE_MAX_BODY_BYTES of this module's server
BEARER_CHALLENGE = 'Bearer realm="medserve"'


@dataclass
class Served:
    client: TestClient
    state: Any
    keys: dict[str, dict[str, str]]  # role -> headers with a key of that role


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = make_template(tmp_path_factory.mktemp("error-mapping") / "home")
    keys = {role: create_key(home, [role]) for role in ("admin", "app", "auditor", "developer")}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDSERVE_MAX_BODY_BYTES", str(MAX_BODY))
        env.delenv("MEDSERVE_AUDIT_FAILURE", raising=False)
        with serve(home, security=True) as (client, state):
            ready = client.get(f"/v2/models/{MODEL}/ready", headers=keys["admin"])
            assert ready.status_code == 200, ready.text
            yield Served(client, state, keys)


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    """The error body of ``response``, checked: the status, JSON, ``error`` and ``code``."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) <= {"error", "code", "details"}, body
    assert isinstance(body["error"], str)
    assert body["error"]
    assert body["code"] == code, body
    return body


def predict_path(version: str | None = None) -> str:
    middle = f"/versions/{version}" if version else ""
    return f"/v1/models/{MODEL}{middle}/predict"


def infer_path(name: str = MODEL) -> str:
    return f"/v2/models/{name}/infer"


def infer_body(rows: list[list[float]]) -> dict[str, Any]:
    tensor = {"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32"}
    return {"inputs": [{**tensor, "data": rows}]}


# -- 401 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/models", None),  # a route of the app factory
        ("GET", "/v1/audit", None),  # an extension's route
        ("GET", f"/v1/models/{MODEL}/versions/1/card", None),
        ("POST", predict_path(), {"instances": records(1)}),  # the fast path
        ("POST", infer_path(), {"inputs": []}),
        ("GET", "/no/such/path", None),  # authentication comes before routing
    ],
)
@pytest.mark.parametrize(
    "credential",
    [None, "Bearer msk_000000000000_unknown", "Basic dXNlcjpwYXNz"],
    ids=["none", "unknown-key", "not-bearer"],
)
def test_401_carries_a_bearer_challenge(
    served: Served, method: str, path: str, body: Any, credential: str | None
) -> None:
    headers = {"Authorization": credential} if credential else {}
    response = served.client.request(method, path, json=body, headers=headers)
    error = error_of(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == BEARER_CHALLENGE
    assert response.headers["x-content-type-options"] == "nosniff"
    expected = (
        "missing credential" if credential != "Bearer msk_000000000000_unknown" else "unknown"
    )
    assert expected in error["error"]


def test_open_paths_need_no_credential(served: Served) -> None:
    for path in ("/v2/health/live", "/v2/health/ready"):
        response = served.client.get(path)
        assert response.status_code == 200, path
        assert "www-authenticate" not in response.headers


# -- 403 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "method", "path", "body", "action"),
    [
        ("app", "GET", "/v1/audit", None, "read_audit"),
        ("app", "GET", "/v1/models", None, "read_models"),
        ("developer", "GET", "/v1/security/keys", None, "admin"),
        ("developer", "PUT", f"/v1/security/tenants/{MODEL}", {"tenant": "a"}, "admin"),
        ("auditor", "POST", predict_path(), {"instances": records(1)}, "predict"),
        ("auditor", "POST", infer_path(), {"inputs": []}, "predict"),
        ("auditor", "POST", "/v1/alerts/1/acknowledge", {}, "write"),
        ("app", "GET", "/metrics", None, "read_metrics"),
    ],
)
def test_403_for_a_role_without_the_action(
    served: Served, role: str, method: str, path: str, body: Any, action: str
) -> None:
    response = served.client.request(method, path, json=body, headers=served.keys[role])
    error = error_of(response, 403, "permission_denied")
    assert error["error"] == f"roles [{role}] do not allow '{action}'"
    assert "www-authenticate" not in response.headers


def test_403_for_a_model_outside_the_keys_grant(served: Served) -> None:
    home = Path(served.state.settings.home)
    other = create_key(home, ["app"], models=["another-model"])
    response = served.client.post(predict_path(), json={"instances": records(1)}, headers=other)
    error = error_of(response, 403, "permission_denied")
    assert MODEL in error["error"]


# -- 404 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "code", "names"),
    [
        ("GET", "/no/such/path", None, "not_found", None),
        ("GET", "/v1/models/nope", None, "model_not_found", "'nope'"),
        ("GET", f"/v1/models/{MODEL}/versions/9", None, "version_not_found", "version 9"),
        ("GET", f"/v1/models/{MODEL}/versions/canary/card", None, "alias_not_found", "canary"),
        ("GET", "/v2/models/nope/ready", None, "model_not_found", "'nope'"),
        ("POST", "/v1/models/nope/predict", {"instances": records(1)}, "model_not_found", "'nope'"),
        ("POST", predict_path("9"), {"instances": records(1)}, "version_not_found", "version 9"),
        ("POST", predict_path("canary"), {"instances": records(1)}, "alias_not_found", "canary"),
        ("POST", infer_path("nope"), {"inputs": []}, "model_not_found", "'nope'"),
        ("POST", "/cds-services/nope", {"hook": "patient-view"}, "not_found", "nope"),
    ],
)
def test_404_has_the_error_body(
    served: Served, method: str, path: str, body: Any, code: str, names: str | None
) -> None:
    response = served.client.request(method, path, json=body, headers=served.keys["admin"])
    error = error_of(response, 404, code)
    assert error["error"] == "Not Found" if names is None else names in error["error"]


# -- 405 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/models", "GET"),
        ("POST", f"/v1/models/{MODEL}", "GET"),
        ("GET", infer_path(), "POST"),  # not POST: the fast path passes it on
        ("PUT", predict_path(), "POST"),
        ("GET", predict_path("1"), "POST"),
        ("POST", "/v2/health/live", "GET"),
    ],
)
def test_405_lists_the_paths_methods_in_allow(
    served: Served, method: str, path: str, allow: str
) -> None:
    response = served.client.request(method, path, headers=served.keys["admin"])
    error_of(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/security/keys", "GET, POST"),
        ("GET", "/cds-services/some-service", "POST"),
        ("GET", "/v1/outcomes", "POST"),
        ("DELETE", f"/v1/models/{MODEL}/versions/1/card", "GET"),
        ("POST", "/openapi.json", "GET, HEAD"),
    ],
)
def test_405_on_extension_and_docs_paths_lists_their_methods(
    served: Served, method: str, path: str, allow: str
) -> None:
    response = served.client.request(method, path, headers=served.keys["admin"])
    error_of(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


# -- 413 ----------------------------------------------------------------------------------------


def _big_records() -> dict[str, Any]:
    body = {"instances": records(1) * 40}
    assert len(json.dumps(body, separators=(",", ":"))) > MAX_BODY
    return body


@pytest.mark.parametrize("path", [predict_path(), predict_path("1"), infer_path()])
def test_413_for_a_declared_body_over_the_limit(served: Served, path: str) -> None:
    response = served.client.post(path, json=_big_records(), headers=served.keys["admin"])
    error = error_of(response, 413, "payload_too_large")
    assert str(MAX_BODY) in error["error"]


def test_413_for_a_streamed_body_over_the_limit(served: Served) -> None:
    """No Content-Length (chunked): the fast path counts the bytes as they arrive."""

    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY // 1000 + 2):
            yield b" " * 1000

    response = served.client.post(
        predict_path(),
        content=chunks(),
        headers={**served.keys["admin"], "Content-Type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    error = error_of(response, 413, "payload_too_large")
    assert f"over the limit of {MAX_BODY} bytes" in error["error"]


def test_a_body_under_the_limit_is_served(served: Served) -> None:
    body = {"instances": records(10)}
    assert len(json.dumps(body)) < MAX_BODY
    response = served.client.post(predict_path(), json=body, headers=served.keys["admin"])
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 10


@pytest.mark.parametrize(
    "path", [f"/v1/models/{MODEL}/explain", "/v1/outcomes"], ids=["explain", "outcomes"]
)
def test_413_for_a_body_over_the_limit_on_the_other_routes(served: Served, path: str) -> None:
    if path == "/v1/outcomes":
        body: dict[str, Any] = {
            "outcomes": [{"prediction_id": f"p{i}-0", "outcome": 1} for i in range(1000)]
        }
    else:
        body = _big_records()
    assert len(json.dumps(body, separators=(",", ":"))) > MAX_BODY
    response = served.client.post(path, json=body, headers=served.keys["admin"])
    error_of(response, 413, "payload_too_large")
    # streamed without a length: cut off once past the limit, not read whole
    raw = json.dumps(body).encode()
    chunks = iter([raw[i : i + 4096] for i in range(0, len(raw), 4096)])
    headers = {**served.keys["admin"], "content-type": "application/json"}
    streamed = served.client.post(path, content=chunks, headers=headers)
    error_of(streamed, 413, "payload_too_large")


# -- 415 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        (predict_path(), "text/csv"),
        (predict_path("1"), "application/xml"),
        (infer_path(), "application/x-www-form-urlencoded"),
        # binary tensors need the Inference-Header-Content-Length header
        (infer_path(), "application/octet-stream"),
        # text/plain is a modalities media type: refused by its handler for a tabular model
        (predict_path(), "text/plain"),
    ],
)
def test_415_for_a_wrong_content_type_on_the_fast_path(
    served: Served, path: str, content_type: str
) -> None:
    response = served.client.post(
        path,
        content=b'{"instances": []}',
        headers={**served.keys["admin"], "Content-Type": content_type},
    )
    error = error_of(response, 415, "unsupported_media_type")
    assert "application/json" in error["error"]


def test_json_media_types_are_accepted_on_the_fast_path(served: Served) -> None:
    for content_type in ("application/json; charset=utf-8", "application/vnd.example+json", None):
        headers = dict(served.keys["admin"])
        if content_type:
            headers["Content-Type"] = content_type
        body = json.dumps({"instances": records(1)}).encode()
        response = served.client.post(predict_path(), content=body, headers=headers)
        assert response.status_code == 200, (content_type, response.text)


# -- 400 and 422 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("mean radius", "abc", "type"),
        ("mean radius", 1e6, "maximum"),
        ("mean texture", -50.0, "minimum"),
        ("mean area", None, "required"),  # left out
    ],
)
def test_422_names_the_field_and_the_rule(
    served: Served, field: str, value: Any, rule: str
) -> None:
    row: dict[str, Any] = {**records(1)[0], field: value}
    if value is None:
        del row[field]
    response = served.client.post(
        predict_path(), json={"instances": [records(1)[0], row]}, headers=served.keys["admin"]
    )
    error = error_of(response, 422, "validation_failed")
    [problem] = error["details"]
    assert (problem["row"], problem["field"], problem["rule"]) == (1, field, rule)
    assert problem["message"]
    assert f"row 1 field '{field}'" in error["error"]


def test_422_lists_every_problem(served: Served) -> None:
    row = {**records(1)[0], "mean radius": "abc", "mean texture": 1e6}
    del row["mean area"]
    response = served.client.post(
        predict_path(), json={"instances": [row]}, headers=served.keys["admin"]
    )
    error = error_of(response, 422, "validation_failed")
    problems = {(d["field"], d["rule"]) for d in error["details"]}
    assert problems == {
        ("mean radius", "type"),
        ("mean texture", "maximum"),
        ("mean area", "required"),
    }
    assert error["error"].startswith("3 problems in 1 row")


def test_422_on_v2_infer_names_the_field(served: Served) -> None:
    metadata = served.client.get(f"/v2/models/{MODEL}", headers=served.keys["admin"]).json()
    names = [t["name"] for t in metadata["inputs"]]
    row = [records(1)[0][n] for n in names]
    row[names.index("mean radius")] = 1e6
    response = served.client.post(
        infer_path(), json=infer_body([row]), headers=served.keys["admin"]
    )
    error = error_of(response, 422, "validation_failed")
    [problem] = error["details"]
    assert (problem["field"], problem["rule"]) == ("mean radius", "maximum")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (infer_path(), b'{"inputs": [', None),  # malformed JSON
        (predict_path(), b'{"instances": ', None),
        (infer_path(), b'{"inputs": []}', "inputs"),
        (
            infer_path(),
            b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}',
            "inputs[0].shape",
        ),
    ],
)
def test_400_for_a_malformed_request_on_the_fast_path(
    served: Served, path: str, body: bytes, field: str | None
) -> None:
    response = served.client.post(
        path, content=body, headers={**served.keys["admin"], "Content-Type": "application/json"}
    )
    error = error_of(response, 400, "invalid_request")
    if field is None:
        assert error["error"].startswith("malformed JSON body")
    else:
        assert [d["field"] for d in error["details"]] == [field]


def test_400_for_request_validation_on_a_fastapi_route(served: Served) -> None:
    """FastAPI's request validation answers 400 with the Error body, never its default 422."""
    response = served.client.post(
        "/v1/security/keys", json={"name": ""}, headers=served.keys["admin"]
    )
    error = error_of(response, 400, "invalid_request")
    fields = {d["field"] for d in error["details"]}
    assert fields == {"body.name", "body.roles"}
    assert "body.roles" in error["error"]
    query = served.client.get("/v1/audit", params={"limit": 0}, headers=served.keys["admin"])
    error = error_of(query, 400, "invalid_request")
    assert [d["field"] for d in error["details"]] == ["query.limit"]


# -- 429 ----------------------------------------------------------------------------------------


def _until_limited(send: Any) -> Any:
    """Requests at 1/s until one is refused: the second already is, unless a second went by."""
    for _ in range(20):
        response = send()
        if response.status_code != 200:
            return response
    raise AssertionError("never rate limited")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", predict_path(), {"instances": records(1)}),  # the fast path
        ("GET", f"/v2/models/{MODEL}", None),  # a FastAPI route (the middleware authenticates)
        ("GET", "/v1/audit", None),  # an extension's route
    ],
)
def test_429_with_retry_after_when_rate_limited(
    served: Served, method: str, path: str, body: Any
) -> None:
    home = Path(served.state.settings.home)
    limited = create_key(home, ["admin"], rate_limit=1)
    response = _until_limited(
        lambda: served.client.request(method, path, json=body, headers=limited)
    )
    error = error_of(response, 429, "rate_limited")
    assert "rate limit of 1 requests/s" in error["error"]
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit()
    assert int(retry_after) >= 1
    # another credential is not limited by this one's bucket
    other = served.client.request(method, path, json=body, headers=served.keys["admin"])
    assert other.status_code == 200

"""The SDK's request encoding, response decoding and error mapping, without a server.

Server round trips are in tests/contract/test_sdk_contract.py; these pin down the wire format the
SDK writes and how it reads what comes back.
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import numpy as np
import orjson
import pytest

from medserve.faces.client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    InferResponse,
    MedserveClientError,
    MedserveConnectionError,
    ModelMetadata,
    NotFound,
    PermissionDenied,
    PredictResponse,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationError,
    _Calls,
    _dumps,
    build_infer_body,
    encode_inputs,
    error_from_response,
)


@pytest.mark.parametrize(
    ("array", "datatype", "data"),
    [
        (np.array([[1.5, 2.0]], dtype=np.float32), "FP32", [1.5, 2.0]),
        (np.array([[1.5, 2.0]], dtype=np.float64), "FP64", [1.5, 2.0]),
        (np.array([[1.5, 2.0]], dtype=np.float16), "FP64", [1.5, 2.0]),
        (np.array([[1, 2]], dtype=np.int32), "INT64", [1, 2]),
        (np.array([[1, 2]], dtype=np.uint8), "INT64", [1, 2]),
        (np.array([[True, False]]), "BOOL", [True, False]),
        (np.array([["a", "b"]]), "BYTES", ["a", "b"]),
        (np.array([[b"a", b"b"]], dtype=object), "BYTES", ["a", "b"]),
    ],
)
def test_an_array_becomes_one_tensor_by_dtype(array: np.ndarray, datatype: str, data: list) -> None:
    [tensor] = encode_inputs(array)
    assert tensor == {"name": "input", "shape": [1, 2], "datatype": datatype, "data": data}


def test_a_matrix_is_sent_flat_in_row_major_order_with_its_shape() -> None:
    X = np.arange(6, dtype=np.float32).reshape(3, 2)
    [tensor] = encode_inputs(X)
    assert tensor["shape"] == [3, 2]
    assert tensor["data"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_mapping_becomes_one_tensor_per_feature() -> None:
    tensors = encode_inputs({"age": [61, 70], "sex": ["F", "M"], "bmi": [22.5, None]})
    by_name = {t["name"]: t for t in tensors}
    assert by_name["age"] == {"name": "age", "shape": [2], "datatype": "INT64", "data": [61, 70]}
    assert by_name["sex"]["datatype"] == "BYTES"
    assert by_name["bmi"]["datatype"] == "FP64"
    assert by_name["bmi"]["data"][0] == 22.5
    assert math.isnan(by_name["bmi"]["data"][1])


def test_raw_v2_inputs_pass_through_unchanged() -> None:
    raw = [
        {"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0], "parameters": {"a": 1}}
    ]
    assert encode_inputs(raw) == raw


@pytest.mark.parametrize("bad", ["text", [1, 2, 3], [{"name": "x"}], 3.0])
def test_other_inputs_are_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="inputs must be"):
        encode_inputs(bad)


def test_infer_body_carries_id_outputs_and_parameters() -> None:
    body = build_infer_body(
        np.zeros((1, 1), dtype=np.float32),
        outputs=["label"],
        request_id="r1",
        parameters={"k": "v"},
    )
    assert body["id"] == "r1"
    assert body["outputs"] == [{"name": "label"}]
    assert body["parameters"] == {"k": "v"}
    assert "id" not in build_infer_body(np.zeros((1, 1)))


def test_nan_goes_on_the_wire_as_null_never_as_invalid_json() -> None:
    raw = _dumps({"instances": [{"a": math.nan, "b": np.float32(1.5), "c": np.int64(2)}]})
    assert orjson.loads(raw) == {"instances": [{"a": None, "b": 1.5, "c": 2}]}


def test_predict_call_encodes_a_dataframe_as_records() -> None:
    import pandas as pd

    frame = pd.DataFrame({"a": [1.0, math.nan], "b": ["x", "y"]})
    call = _Calls.predict("my model", "staging", frame)
    assert call.method == "POST"
    assert call.path == "/v1/models/my%20model/versions/staging/predict"
    assert call.body is not None
    assert orjson.loads(call.body) == {"instances": [{"a": 1.0, "b": "x"}, {"a": None, "b": "y"}]}


def test_paths_default_to_production_by_leaving_the_version_out() -> None:
    assert _Calls.infer("m", None, {"inputs": []}).path == "/v2/models/m/infer"
    assert _Calls.infer("m", 3, {"inputs": []}).path == "/v2/models/m/versions/3/infer"
    assert _Calls.model_ready("a/b", None).path == "/v2/models/a%2Fb/ready"


def test_infer_response_as_numpy_reshapes_each_output() -> None:
    reply = InferResponse.from_json(
        {
            "model_name": "m",
            "model_version": "2",
            "id": "r",
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [2, 2],
                    "data": [0.1, 0.9, 0.8, 0.2],
                },
                {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["b", "a"]},
                {"name": "flag", "datatype": "BOOL", "shape": [2, 1], "data": [True, False]},
            ],
        }
    )
    probabilities = reply.as_numpy("probabilities")
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (2, 2)
    assert probabilities[1, 0] == np.float32(0.8)
    assert reply.as_numpy("label").tolist() == ["b", "a"]
    assert reply.as_numpy("flag").shape == (2, 1)
    assert reply.model_version == "2"
    with pytest.raises(KeyError, match="outputs: probabilities, label, flag"):
        reply.output("value")


def test_predict_response_reads_classifier_and_regressor_rows() -> None:
    clf = PredictResponse.from_json(
        {
            "model": "m",
            "version": 1,
            "predictions": [{"label": "a", "probabilities": {"a": 0.7, "b": 0.3}}],
        }
    )
    assert clf.labels == ["a"]
    assert clf.predictions[0].probabilities == {"a": 0.7, "b": 0.3}
    reg = PredictResponse.from_json({"model": "r", "version": "4", "predictions": [{"value": 2.5}]})
    assert reg.version == 4
    assert reg.values == [2.5]


def test_model_metadata_lists_features_in_order() -> None:
    meta = ModelMetadata.from_json(
        {
            "name": "m",
            "versions": [3],
            "platform": "onnx",
            "inputs": [
                {"name": "b", "datatype": "FP32", "shape": [-1]},
                {"name": "a", "datatype": "FP32", "shape": [-1]},
            ],
            "outputs": [{"name": "value", "datatype": "FP32", "shape": [-1]}],
        }
    )
    assert meta.feature_names == ["b", "a"]
    assert meta.versions == ["3"]


def response(status: int, body: object | None = None, text: str | None = None) -> httpx.Response:
    if body is not None:
        return httpx.Response(status, json=body)
    return httpx.Response(status, text=text or "")


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (403, PermissionDenied),
        (404, NotFound),
        (409, Conflict),
        (413, BadRequest),
        (415, BadRequest),
        (422, ValidationError),
        (500, ServerError),
        (502, ServerError),
        (503, Unavailable),
        (418, MedserveClientError),
    ],
)
def test_statuses_map_to_typed_errors(status: int, cls: type[MedserveClientError]) -> None:
    err = error_from_response(response(status, {"error": "what went wrong", "code": "some_code"}))
    assert type(err) is cls
    assert err.status == status
    assert err.code == "some_code"
    assert err.message == "what went wrong"
    assert str(err) == f"{status} what went wrong [some_code]"


def test_validation_error_exposes_the_problems() -> None:
    problems = [
        {"row": 0, "field": "age", "rule": "minimum", "message": "-1 is below the minimum 0"}
    ]
    err = error_from_response(
        response(422, {"error": "1 problem", "code": "validation_failed", "details": problems})
    )
    assert isinstance(err, ValidationError)
    assert err.problems == problems
    assert isinstance(err, BadRequest)


def test_a_non_json_error_keeps_the_text_or_the_status_line() -> None:
    err = error_from_response(response(502, text="upstream connect error"))
    assert isinstance(err, ServerError)
    assert err.message == "upstream connect error"
    assert err.code is None
    assert error_from_response(response(504)).message == "HTTP 504 Gateway Timeout"


def test_a_framework_style_detail_is_read_too() -> None:
    assert (
        error_from_response(response(405, {"detail": "Method Not Allowed"})).message
        == "Method Not Allowed"
    )


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_connection_errors_are_wrapped(closed_port_url: str) -> None:
    with (
        Client(closed_port_url, timeout=2) as dead,
        pytest.raises(MedserveConnectionError) as caught,
    ):
        dead.is_live()
    assert caught.value.status is None
    assert "GET /v2/health/live failed" in caught.value.message
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_async_connection_errors_are_wrapped(closed_port_url: str) -> None:
    async with AsyncClient(closed_port_url, timeout=2) as dead:
        with pytest.raises(MedserveConnectionError):
            await dead.predict("m", [{"a": 1}])


class _Recorder(BaseHTTPRequestHandler):
    """A real loopback HTTP/1.1 server that remembers what each request carried."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[int, dict[str, str]]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.client_address[1], dict(self.headers.items())))
        payload = b'{"live": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[tuple[int, dict[str, str]]]]]:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    server.shutdown()
    server.server_close()
    thread.join()


def test_api_key_is_a_bearer_token_and_connections_are_kept_alive(
    recorder: tuple[str, list[tuple[int, dict[str, str]]]],
) -> None:
    url, seen = recorder
    with Client(url, api_key="s3cret") as client:
        assert all(client.is_live() for _ in range(3))
    with Client(url) as anonymous:
        assert anonymous.is_live()
    ports = {port for port, _ in seen[:3]}
    assert len(ports) == 1  # one connection reused for the three calls
    assert all(headers["Authorization"] == "Bearer s3cret" for _, headers in seen[:3])
    assert "Authorization" not in seen[3][1]
    assert seen[0][1]["User-Agent"].startswith("medserve-client/")


# -- request ids, explanations, outcomes and governance (both clients) ------------------------
_CARD = {
    "model": "m",
    "version": 2,
    "complete": False,
    "missing": ["HTI-1 funding"],
    "problems": [],
    "hti1_source_attributes": {"funding": {"filled": False}},
}
_EVALUATION = {
    "kind": "test",
    "dataset_name": "test.csv",
    "dataset_sha256": "ab" * 32,
    "created_at": "2026-12-06T10:00:00+00:00",
    "result": {"metrics": {"auroc": {"value": 0.91, "ci_low": 0.88, "ci_high": 0.94}}},
}


def _answer(request: httpx.Request) -> httpx.Response:
    """A stand-in server: what medserve answers on each route the SDK calls here."""
    path = request.url.path
    headers = {"X-Request-ID": "0193abc-server-id"}
    if path.endswith("/predict"):
        body = {"model": "m", "version": 2, "predictions": [{"label": "1"}]}
        if b"with-body-id" in request.content:
            body["request_id"] = "from-the-body"
        return httpx.Response(200, json=body, headers=headers)
    if path.endswith("/infer"):
        return httpx.Response(200, json={"model_name": "m", "outputs": []}, headers=headers)
    if path.endswith("/explain"):
        sent = orjson.loads(request.content)
        row = {"base_value": 0.2, "prediction": 0.5, "attributions": {"a": 0.3}, "top": ["a up"]}
        body = {"model": "m", "version": 2, "method": "exact", "target": sent.get("class")}
        return httpx.Response(200, json={**body, "explanations": [row]}, headers=headers)
    if path == "/v1/outcomes":
        sent = orjson.loads(request.content)
        assert sent == {"outcomes": [{"prediction_id": "x-0", "outcome": 1}]}
        return httpx.Response(200, json={"matched": [1], "labelled": 1, "unmatched": []})
    if path.endswith("/card"):
        return httpx.Response(200, json=_CARD)
    if path.endswith("/evaluations"):
        return httpx.Response(200, json={"model": "m", "version": 2, "evaluations": [_EVALUATION]})
    if path.endswith("/gate"):
        body = {"model": "m", "version": 2, "passed": False, "problems": ["p1"], "fixes": ["f1"]}
        return httpx.Response(200, json=body)
    return httpx.Response(404, json={"error": "no"}, headers=headers)


def test_responses_carry_the_request_id_and_typed_governance_results() -> None:
    with Client("http://medserve", transport=httpx.MockTransport(_answer)) as client:
        answer = client.predict("m", [{"a": 1}])
        assert answer.request_id == "0193abc-server-id"
        assert answer.prediction_ids == ["0193abc-server-id-0"]
        assert client.predict("m", [{"a": "with-body-id"}]).request_id == "from-the-body"
        assert client.infer("m", np.ones((1, 1))).request_id == "0193abc-server-id"
        explained = client.explain("m", [{"a": 1}], target="1")
        assert explained.target == "1"
        assert explained.explanations[0].attributions == {"a": 0.3}
        assert explained.explanations[0].top == ["a up"]
        outcome = client.outcomes([{"prediction_id": "x-0", "outcome": 1}])
        assert (outcome.matched, outcome.labelled, outcome.unmatched) == ([1], 1, [])
        card = client.card("m", 2)
        assert card.complete is False
        assert card.missing == ["HTI-1 funding"]
        assert card.hti1["funding"] == {"filled": False}
        [evaluation] = client.evaluations("m", 2)
        assert evaluation.kind == "test"
        assert evaluation.metric("auroc", "ci_low") == 0.88
        assert evaluation.metric("brier") is None
        assert evaluation.created_at is not None
        gate = client.gate("m", 2)
        assert gate.passed is False
        assert [(p.message, p.fix) for p in gate.problems] == [("p1", "f1")]
        with pytest.raises(NotFound) as caught:
            client.model("nothing")
        assert caught.value.request_id == "0193abc-server-id"


async def test_the_async_client_has_the_same_methods() -> None:
    transport = httpx.MockTransport(_answer)
    async with AsyncClient("http://medserve", transport=transport) as client:
        assert (await client.predict("m", [{"a": 1}])).request_id == "0193abc-server-id"
        assert (await client.explain("m", [{"a": 1}])).explanations[0].prediction == 0.5
        assert (await client.outcomes([{"prediction_id": "x-0", "outcome": 1}])).labelled == 1
        assert (await client.card("m", 2)).missing == ["HTI-1 funding"]
        assert (await client.evaluations("m", 2))[0].metric("auroc") == 0.91
        assert (await client.gate("m", 2)).problems[0].fix == "f1"

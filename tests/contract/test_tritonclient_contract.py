"""Triton's own HTTP client (``tritonclient[http]``) against a real medserve process.

Triton users point ``InferenceServerClient`` at any Open Inference Protocol v2 server; these tests
pin down that the calls they make work unchanged, with JSON and binary tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient._plugin import InferenceServerClientPlugin
from tritonclient.utils import InferenceServerException

MODEL = "breast-cancer"


class BearerPlugin(InferenceServerClientPlugin):
    """Triton's client-plugin hook (as its BasicAuth plugin): credentials on every call."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers

    def __call__(self, request: Any) -> None:
        request.headers.update(self.headers)


@pytest.fixture(scope="module")
def client(host_port: str, auth_headers: dict[str, str]) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=host_port, connection_timeout=10, network_timeout=10)
    c.register_plugin(BearerPlugin(auth_headers))
    yield c
    c.close()


def matrix_request(
    X: np.ndarray,
) -> tuple[list[triton.InferInput], list[triton.InferRequestedOutput]]:
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=False)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=False)]
    return [tensor], outputs


def test_server_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    metadata = client.get_server_metadata()
    assert metadata["name"] == "medserve"
    assert isinstance(metadata["version"], str)
    assert isinstance(metadata["extensions"], list)


def test_model_ready(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready(MODEL) is True
    assert client.is_model_ready(MODEL, model_version="production") is True
    assert client.is_model_ready("no-such-model") is False


def test_model_metadata_describes_the_signature(
    client: triton.InferenceServerClient, reference: Any
) -> None:
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL
    assert [t["name"] for t in metadata["inputs"]] == list(reference.models[MODEL].frame.columns)
    assert all(t["datatype"] == "FP32" for t in metadata["inputs"])
    outputs = {t["name"]: t for t in metadata["outputs"]}
    assert "probabilities" in outputs
    assert "label" in outputs
    assert sorted(metadata["parameters"]["class_labels"]) == ["benign", "malignant"]


def test_infer_matches_a_local_fit(client: triton.InferenceServerClient, reference: Any) -> None:
    X = reference.matrix(MODEL, 25)
    inputs, outputs = matrix_request(X)
    result = client.infer(MODEL, inputs, outputs=outputs, request_id="triton-contract-1")

    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None
    assert probabilities.shape == (25, 2)
    served_classes = client.get_model_metadata(MODEL)["parameters"]["class_labels"]
    expected = reference.probabilities(MODEL, X)
    order = [reference.classes(MODEL).index(c) for c in served_classes]
    np.testing.assert_allclose(probabilities, expected[:, order], atol=1e-5, rtol=0)

    response = result.get_response()
    assert response["id"] == "triton-contract-1"
    assert response["model_name"] == MODEL
    assert [o["name"] for o in response["outputs"]] == ["probabilities"]


def test_infer_by_alias_and_by_number_agree(
    client: triton.InferenceServerClient, reference: Any
) -> None:
    X = reference.matrix(MODEL, 5)
    inputs, outputs = matrix_request(X)
    by_alias = client.infer(MODEL, inputs, model_version="production", outputs=outputs)
    number = by_alias.get_response()["model_version"]
    assert number.isdigit()
    by_number = client.infer(MODEL, inputs, model_version=number, outputs=outputs)
    assert by_number.get_response()["model_version"] == number
    np.testing.assert_array_equal(
        by_alias.as_numpy("probabilities"), by_number.as_numpy("probabilities")
    )


def test_per_feature_tensors(client: triton.InferenceServerClient, reference: Any) -> None:
    X = reference.matrix(MODEL, 3)
    columns = list(reference.models[MODEL].frame.columns)
    inputs = []
    for j, feature in enumerate(columns):
        tensor = triton.InferInput(feature, [3], "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(X[:, j]), binary_data=False)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput("label", binary_data=False)]
    result = client.infer(MODEL, inputs, outputs=outputs)
    labels = result.as_numpy("label")
    assert labels is not None
    expected = reference.models[MODEL].estimator.predict(reference.models[MODEL].frame.iloc[:3])
    assert [v.decode() if isinstance(v, bytes) else str(v) for v in labels.ravel()] == list(
        expected
    )


def test_unknown_model_raises_with_the_server_message(
    client: triton.InferenceServerClient, reference: Any
) -> None:
    inputs, outputs = matrix_request(reference.matrix(MODEL, 1))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("no-such-model", inputs, outputs=outputs)
    assert caught.value.status() == "404"
    assert "no-such-model" in caught.value.message()


def test_wrong_shape_is_a_400_naming_the_rule(
    client: triton.InferenceServerClient, reference: Any
) -> None:
    X = reference.matrix(MODEL, 2)[:, :29]
    inputs, outputs = matrix_request(np.ascontiguousarray(X))
    with pytest.raises(InferenceServerException) as caught:
        client.infer(MODEL, inputs, outputs=outputs)
    assert caught.value.status() == "400"
    assert "[n, 30]" in caught.value.message()


def test_infer_without_requested_outputs_returns_every_output_as_json(
    client: triton.InferenceServerClient, reference: Any
) -> None:
    # With no outputs named, tritonclient asks for binary outputs ("binary_data_output": true);
    # the server answers in JSON, which the client reads all the same.
    X = reference.matrix(MODEL, 3)
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=False)
    result = client.infer(MODEL, [tensor])
    names = {o["name"] for o in result.get_response()["outputs"]}
    assert names >= {"label", "probabilities"}
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None
    np.testing.assert_allclose(probabilities.sum(axis=1), np.ones(3), atol=1e-5)


def test_binary_tensor_input_as_tritonclient_sends_by_default(
    client: triton.InferenceServerClient, reference: Any
) -> None:
    """tritonclient's default: JSON header + raw little-endian tensor bytes."""
    X = reference.matrix(MODEL, 7)
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)  # binary_data=True is the default
    result = client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("probabilities")])
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None
    served_classes = client.get_model_metadata(MODEL)["parameters"]["class_labels"]
    order = [reference.classes(MODEL).index(c) for c in served_classes]
    np.testing.assert_allclose(
        probabilities, reference.probabilities(MODEL, X)[:, order], atol=1e-5, rtol=0
    )


def test_binary_tensor_shorter_than_declared_is_a_clear_400(
    client: triton.InferenceServerClient, host_port: str, auth_headers: dict[str, str]
) -> None:
    import json

    import httpx

    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 30],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 120},
                }
            ]
        }
    ).encode()
    response = httpx.post(
        f"http://{host_port}/v2/models/{MODEL}/infer",
        content=header + b"\x00" * 60,
        headers={
            **auth_headers,
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 400
    assert "binary_data_size" in response.json()["error"]

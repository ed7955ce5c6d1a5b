"""KServe's Python SDK v2 REST client (``kserve.InferenceRESTClient``) against a real medserve.

The client is async and talks Open Inference Protocol v2; it has no model-metadata call, so
these tests cover what it offers: server liveness/readiness, model readiness and inference.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


@pytest.fixture
async def client(auth_headers: dict[str, str]) -> AsyncIterator[InferenceRESTClient]:
    def bearer(request: httpx.Request) -> httpx.Request:
        request.headers.update(auth_headers)  # RESTConfig.auth is handed to httpx
        return request

    c = InferenceRESTClient(RESTConfig(protocol="v2", timeout=10, retries=0, auth=bearer))
    yield c
    await c.close()


def request_for(name: str, X: np.ndarray, *, request_id: str | None = None) -> InferRequest:
    tensor = InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=False)
    return InferRequest(model_name=name, infer_inputs=[tensor], request_id=request_id)


async def test_server_and_model_readiness(client: InferenceRESTClient, base_url: str) -> None:
    assert await client.is_server_live(base_url) is True
    assert await client.is_server_ready(base_url) is True
    assert await client.is_model_ready(base_url, "breast-cancer") is True
    assert await client.is_model_ready(base_url, "diabetes-progression") is True
    assert await client.is_model_ready(base_url, "no-such-model") is False


async def test_infer_breast_cancer(
    client: InferenceRESTClient,
    base_url: str,
    reference: Any,
    auth_headers: dict[str, str],
) -> None:
    name = "breast-cancer"
    X = reference.matrix(name, 12)
    response = await client.infer(
        base_url, request_for(name, X, request_id="kserve-1"), model_name=name
    )

    assert response.model_name == name
    assert response.id == "kserve-1"
    served = {o.name: o for o in response.outputs}
    probabilities = served["probabilities"].as_numpy()
    assert probabilities.shape == (12, 2)
    # The v2 metadata says which column is which class; the local fit orders by classes_.
    metadata = httpx.get(f"{base_url}/v2/models/{name}", headers=auth_headers).json()
    order = [reference.classes(name).index(c) for c in metadata["parameters"]["class_labels"]]
    np.testing.assert_allclose(
        probabilities, reference.probabilities(name, X)[:, order], atol=1e-5, rtol=0
    )


async def test_infer_diabetes_progression(
    client: InferenceRESTClient, base_url: str, reference: Any
) -> None:
    name = "diabetes-progression"
    X = reference.matrix(name, 20)
    request = request_for(name, X)
    request.request_outputs = [RequestedOutput("value")]
    response = await client.infer(base_url, request, model_name=name)

    assert [o.name for o in response.outputs] == ["value"]
    values = response.outputs[0].as_numpy().reshape(-1)
    np.testing.assert_allclose(values, reference.values(name, X), rtol=1e-5, atol=1e-3)


async def test_unknown_model_is_an_http_error_with_the_server_message(
    client: InferenceRESTClient, base_url: str, reference: Any
) -> None:
    X = reference.matrix("breast-cancer", 1)
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await client.infer(base_url, request_for("no-such-model", X), model_name="no-such-model")
    assert caught.value.response.status_code == 404
    assert "no-such-model" in str(caught.value)
    assert caught.value.response.json()["code"] == "model_not_found"


async def test_invalid_values_are_a_422_listing_the_problems(
    client: InferenceRESTClient, base_url: str, reference: Any
) -> None:
    X = reference.matrix("breast-cancer", 2)
    X[1, 0] = 1e9  # far above the signature's maximum for "mean radius"
    with pytest.raises(httpx.HTTPStatusError) as caught:
        await client.infer(base_url, request_for("breast-cancer", X), model_name="breast-cancer")
    assert caught.value.response.status_code == 422
    problems = caught.value.response.json()["details"]
    assert {"row": 1, "field": "mean radius", "rule": "maximum"}.items() <= problems[0].items()


async def test_binary_tensor_input_as_kserve_sends_by_default(
    client: InferenceRESTClient,
    base_url: str,
    reference: Any,
    auth_headers: dict[str, str],
) -> None:
    name = "breast-cancer-rf"
    X = reference.matrix(name, 9)
    tensor = InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)  # binary by default: application/octet-stream body
    request = InferRequest(model_name=name, infer_inputs=[tensor])
    response = await client.infer(base_url, request, model_name=name)
    served = {o.name: o for o in response.outputs}
    metadata = httpx.get(f"{base_url}/v2/models/{name}", headers=auth_headers).json()
    order = [reference.classes(name).index(c) for c in metadata["parameters"]["class_labels"]]
    np.testing.assert_allclose(
        served["probabilities"].as_numpy(),
        reference.probabilities(name, X)[:, order],
        atol=1e-5,
        rtol=0,
    )

"""medserve's own SDK (``medserve.faces.client``)
against a real server process over the demo models."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from medserve.faces.client import (
    AsyncClient,
    BadRequest,
    Client,
    NotFound,
    ValidationError,
)

BC = "breast-cancer"
DIABETES = "diabetes-progression"


@pytest.fixture(scope="module")
def client(base_url: str, api_key: str) -> Iterator[Client]:
    with Client(base_url, api_key=api_key) as c:
        yield c


def class_order(client: Client, reference: Any, name: str) -> list[int]:
    served = client.model_metadata(name).parameters["class_labels"]
    return [reference.classes(name).index(c) for c in served]


def test_health_and_server_metadata(client: Client) -> None:
    assert client.is_live() is True
    assert client.is_ready() is True
    meta = client.server_metadata()
    assert meta.name == "medserve"
    assert "records_api" in meta.extensions


def test_model_readiness(client: Client) -> None:
    assert client.is_model_ready(BC) is True
    assert client.is_model_ready(BC, version="production") is True
    with pytest.raises(NotFound) as caught:
        client.is_model_ready("no-such-model")
    assert "no-such-model" in caught.value.message


def test_model_metadata(client: Client, reference: Any) -> None:
    meta = client.model_metadata(BC)
    assert meta.name == BC
    assert meta.feature_names == list(reference.models[BC].frame.columns)
    assert {t.name for t in meta.outputs} >= {"label", "probabilities"}
    assert meta.parameters["task"] == "classification"
    by_number = client.model_metadata(BC, version=int(meta.versions[0]))
    assert by_number.versions == meta.versions


def test_predict_records_matches_a_local_fit(client: Client, reference: Any) -> None:
    rows = reference.records(BC, 10)
    result = client.predict(BC, rows)
    assert result.model == BC
    assert result.version >= 1
    assert len(result.predictions) == 10
    X = reference.matrix(BC, 10)
    expected = reference.probabilities(BC, X)
    for i, prediction in enumerate(result.predictions):
        assert prediction.probabilities is not None
        got = [prediction.probabilities[c] for c in reference.classes(BC)]
        np.testing.assert_allclose(got, expected[i], atol=1e-5, rtol=0)
        assert prediction.label == reference.classes(BC)[int(np.argmax(expected[i]))]
    assert result.labels == [p.label for p in result.predictions]


def test_predict_accepts_a_dataframe_and_a_version(client: Client, reference: Any) -> None:
    frame = reference.models[DIABETES].frame.iloc[:4]
    production = client.model(DIABETES).aliases["production"]
    result = client.predict(DIABETES, frame, version=production)
    assert result.version == production
    assert all(p.label is None and p.value is not None for p in result.predictions)
    np.testing.assert_allclose(
        np.asarray(result.values, dtype=np.float64),
        reference.values(DIABETES, reference.matrix(DIABETES, 4)),
        rtol=1e-5,
        atol=1e-3,
    )


def test_infer_with_a_matrix(client: Client, reference: Any) -> None:
    X = reference.matrix(BC, 8)
    reply = client.infer(BC, X, request_id="sdk-1", outputs=["probabilities"])
    assert reply.id == "sdk-1"
    assert reply.model_name == BC
    assert [o.name for o in reply.outputs] == ["probabilities"]
    probabilities = reply.as_numpy("probabilities")
    assert probabilities.shape == (8, 2)
    expected = reference.probabilities(BC, X)[:, class_order(client, reference, BC)]
    np.testing.assert_allclose(probabilities, expected, atol=1e-5, rtol=0)
    with pytest.raises(KeyError, match="label"):
        reply.as_numpy("label")


def test_infer_with_float64_matrix_and_alias(client: Client, reference: Any) -> None:
    X = reference.matrix(DIABETES, 6, dtype=np.float64)
    reply = client.infer(DIABETES, X, version="production")
    values = reply.as_numpy("value").reshape(-1)
    np.testing.assert_allclose(values, reference.values(DIABETES, X), rtol=1e-5, atol=1e-3)


def test_infer_with_one_column_per_feature(client: Client, reference: Any) -> None:
    X = reference.matrix(BC, 4)
    columns = {name: X[:, j].tolist() for j, name in enumerate(reference.models[BC].frame.columns)}
    by_feature = client.infer(BC, columns, outputs=["probabilities"]).as_numpy("probabilities")
    by_matrix = client.infer(BC, X, outputs=["probabilities"]).as_numpy("probabilities")
    np.testing.assert_allclose(by_feature, by_matrix, atol=1e-6, rtol=0)


def test_infer_with_raw_v2_inputs_and_parameters(client: Client, reference: Any) -> None:
    X = reference.matrix(BC, 2)
    raw = [{"name": "input", "shape": [2, 30], "datatype": "FP32", "data": X.ravel().tolist()}]
    reply = client.infer(BC, raw, parameters={"trace": "abc"})
    assert reply.parameters["trace"] == "abc"  # the caller's parameters come back
    # with the label's operating point (the demo model's training chose it)
    assert 0 < reply.parameters["threshold"] < 1
    assert reply.parameters["positive_class"] in {"malignant", "benign"}
    assert reply.as_numpy("probabilities").shape == (2, 2)


def test_registry_views(client: Client) -> None:
    names = {m.name for m in client.models()}
    assert {BC, "breast-cancer-rf", DIABETES} <= names
    assert [m.name for m in client.models(search="diabetes")] == [DIABETES]
    model = client.model(BC)
    assert "production" in model.aliases
    production = model.aliases["production"]
    version = client.model_version(BC, production)
    assert version.version == production
    assert "production" in version.aliases
    assert version.artifact_sha256
    assert client.model_version(BC, "production") == version
    history = client.alias_history(BC)
    assert history[-1].alias == "production"
    assert history[-1].to_version == production


def test_missing_model_and_version_are_not_found(client: Client, reference: Any) -> None:
    with pytest.raises(NotFound) as caught:
        client.predict("no-such-model", reference.records(BC, 1))
    assert caught.value.status == 404
    assert caught.value.code == "model_not_found"
    assert "no-such-model" in caught.value.message
    with pytest.raises(NotFound) as caught:
        client.predict(BC, reference.records(BC, 1), version=999)
    assert "999" in caught.value.message
    with pytest.raises(NotFound):
        client.model("no-such-model")


def test_invalid_rows_raise_validation_error_with_problems(client: Client, reference: Any) -> None:
    rows = reference.records(BC, 3)
    rows[0]["mean radius"] = "big"
    del rows[2]["mean texture"]
    rows[2]["favourite colour"] = "blue"
    with pytest.raises(ValidationError) as caught:
        client.predict(BC, rows)
    err = caught.value
    assert err.status == 422
    assert err.code == "validation_failed"
    found = {(p["row"], p["field"], p["rule"]) for p in err.problems}
    assert (0, "mean radius", "type") in found
    assert (2, "favourite colour", "unknown_field") in found
    assert any(row == 2 and field == "mean texture" for row, field, _ in found)
    assert isinstance(err, BadRequest)  # a client mistake, catchable as one


def test_missing_value_sent_as_nan_is_reported_not_crashed(client: Client, reference: Any) -> None:
    rows = reference.records(BC, 1)
    rows[0]["mean radius"] = math.nan  # goes on the wire as null
    with pytest.raises(ValidationError) as caught:
        client.predict(BC, rows)
    assert any(p["field"] == "mean radius" for p in caught.value.problems)


def test_malformed_body_is_bad_request(client: Client) -> None:
    with pytest.raises(BadRequest) as caught:
        client.infer(BC, [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0]}])
    assert caught.value.status == 400
    assert caught.value.details[0]["rule"] == "shape"


async def test_async_client_twenty_concurrent_predicts(
    base_url: str, api_key: str, reference: Any
) -> None:
    rows = reference.records(BC, 20)
    async with AsyncClient(base_url, api_key=api_key) as client:
        assert await client.is_live()
        assert await client.is_ready()
        assert await client.is_model_ready(BC)
        results = await asyncio.gather(*(client.predict(BC, [row]) for row in rows))
        batch = await client.predict(BC, rows)
    assert [r.predictions[0].label for r in results] == batch.labels
    for single, together in zip(results, batch.predictions, strict=True):
        assert single.predictions[0].probabilities is not None
        assert together.probabilities is not None
        for cls, p in together.probabilities.items():
            assert single.predictions[0].probabilities[cls] == pytest.approx(p, abs=1e-6)


async def test_async_client_full_surface(base_url: str, api_key: str, reference: Any) -> None:
    async with AsyncClient(base_url, api_key=api_key) as client:
        meta = await client.model_metadata(BC)
        assert (await client.server_metadata()).name == "medserve"
        X = reference.matrix(BC, 3)
        reply = await client.infer(BC, X, version=meta.versions[0], request_id="a-1")
        assert reply.id == "a-1"
        assert reply.as_numpy("probabilities").shape == (3, 2)
        assert BC in {m.name for m in await client.models()}
        model = await client.model(BC)
        assert (await client.model_version(BC, model.aliases["production"])).model_name == BC
        assert len(await client.alias_history(BC, "production")) >= 1
        with pytest.raises(NotFound):
            await client.predict("no-such-model", reference.records(BC, 1))
        with pytest.raises(ValidationError):
            await client.predict(BC, [{"mean radius": "x"}])

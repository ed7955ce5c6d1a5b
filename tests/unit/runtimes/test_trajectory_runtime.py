"""The ``trajectory`` flavor: an ONNX graph built with ONNX's own GRU op and ``sequence_lens``
equals its numpy reference, ignores padding, registers as its flavor and serves through the
records API and OIP v2 with time-step occlusion explanations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient
from tests.unit.serving.inprocess_app import registry_at, serve

from medserve.core.errors import ModelLoadError
from medserve.core.registry.signature import FeatureSpec
from medserve.core.runtimes.trajectory_runtime import TrajectoryRuntime
from medserve.core.series import Padded, SeriesSpec, TimeStepExplainer, pack, target_index
from medserve.features.training.trajectory_gru import GruModel

SERIES = [SeriesSpec(name="heart_rate", max_length=6), SeriesSpec(name="lactate", max_length=4)]


def _batch(rng: np.random.Generator, n: int) -> dict[str, Padded]:
    out = {}
    for spec in SERIES:
        width = spec.max_length
        values = rng.normal(80 if spec.name == "heart_rate" else 2.5, 5, (n, width))
        gaps = rng.uniform(600, 7200, (n, width))
        times = np.cumsum(gaps[:, ::-1], axis=1)[:, ::-1].copy()  # oldest first, decreasing
        lengths = rng.integers(0, width + 1, n)
        out[spec.name] = Padded(values, times, lengths)
    return out


def _matrix(static: np.ndarray, batch: dict[str, Padded]) -> np.ndarray:
    return np.concatenate([static, pack(SERIES, batch)], axis=1).astype(np.float32)


@pytest.mark.parametrize("linear_before_reset", [True, False])
def test_onnx_gru_equals_its_numpy_source(linear_before_reset: bool) -> None:
    model = GruModel.random(
        [(s.name, s.max_length) for s in SERIES],
        hidden=6,
        n_static=2,
        seed=3,
        linear_before_reset=linear_before_reset,
    )
    runtime = TrajectoryRuntime(model.to_onnx())
    rng = np.random.default_rng(0)
    static = rng.normal(size=(32, 2))
    batch = _batch(rng, 32)
    X = _matrix(static, batch)
    served = runtime.predict(X)["probabilities"]
    # the reference on the same float32 inputs the graph received
    as_fed = {
        k: Padded(
            v.values.astype(np.float32).astype(np.float64),
            v.times.astype(np.float32).astype(np.float64),
            v.lengths,
        )
        for k, v in batch.items()
    }
    reference = model.predict(static.astype(np.float32), as_fed)
    np.testing.assert_allclose(served, reference, rtol=0, atol=1e-5)
    assert (batch["lactate"].lengths == 0).any()  # an empty series is served too
    assert runtime.metadata().task == "classification"
    assert runtime.metadata().n_features == X.shape[1]


def test_padding_values_change_nothing() -> None:
    model = GruModel.random([(s.name, s.max_length) for s in SERIES], hidden=4, n_static=2)
    runtime = TrajectoryRuntime(model.to_onnx())
    rng = np.random.default_rng(1)
    static = rng.normal(size=(16, 2))
    batch = _batch(rng, 16)
    feeds = runtime.feeds_of(static, batch)
    base = runtime._outputs(feeds)["probabilities"]
    # garbage (huge, negative, NaN-free) past each row's length, straight into the session
    for spec in SERIES:
        mask = batch[spec.name].mask
        for part in ("values", "times"):
            noisy = feeds[f"{spec.name}.{part}"].copy()
            noisy[~mask] = rng.normal(0, 1e4, (~mask).sum())
            feeds[f"{spec.name}.{part}"] = noisy
    assert np.array_equal(runtime._outputs(feeds)["probabilities"], base)
    # and the reference ignores it too
    garbage = {
        k: Padded(np.where(v.mask, v.values, 1e6), np.where(v.mask, v.times, -5.0), v.lengths)
        for k, v in batch.items()
    }
    np.testing.assert_allclose(model.predict(static, garbage), model.predict(static, batch))


def test_a_graph_without_its_layout_is_refused() -> None:
    import onnx

    proto = onnx.load_model_from_string(GruModel.random([("hr", 3)]).to_onnx())
    del proto.metadata_props[:]
    with pytest.raises(ModelLoadError, match=r"medserve\.trajectory"):
        TrajectoryRuntime(proto.SerializeToString())


class _ImageLike:
    def occlusion(self, tensor: np.ndarray, target: int) -> np.ndarray:
        return tensor


def test_occlusion_names_each_measurement_by_relative_time() -> None:
    model = GruModel.random([(s.name, s.max_length) for s in SERIES], hidden=4, n_static=2)
    runtime = TrajectoryRuntime(model.to_onnx())
    rng = np.random.default_rng(2)
    batch = _batch(rng, 3)
    batch["heart_rate"].lengths[:] = [3, 6, 0]
    # the data plane finds it by its own protocol, not by an ``occlusion`` attribute, which an
    # image runtime has with another signature
    assert isinstance(runtime, TimeStepExplainer)
    assert not isinstance(_ImageLike(), TimeStepExplainer)
    assert target_index(["0", "1"], "0") == 0
    assert target_index(["0", "1"], None) == target_index(["0", "1"], "9") == -1
    explained = runtime.explain_time_steps(_matrix(rng.normal(size=(3, 2)), batch))
    assert [len(e["series"]["heart_rate"]) for e in explained] == [3, 6, 0]
    first = explained[0]["series"]["heart_rate"][0]
    assert set(first) == {"hours_before_as_of", "value", "contribution"}
    # removing the only measurement of a one-point series moves the output by its contribution
    batch["lactate"].lengths[0] = 1
    X = _matrix(np.zeros((3, 2)), batch)
    only = runtime.explain_time_steps(X[:1])[0]
    without = {k: Padded(v.values[:1], v.times[:1], v.lengths[:1].copy()) for k, v in batch.items()}
    without["lactate"].lengths[0] = 0
    p_without = runtime.predict(_matrix(np.zeros((1, 2)), without))["probabilities"][0, 1]
    assert only["series"]["lactate"][0]["contribution"] == pytest.approx(
        only["output"] - p_without, abs=1e-6
    )


# -- registered and served ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, GruModel]]:
    home = tmp_path_factory.mktemp("trajectory-flavor") / "home"
    model = GruModel.random([(s.name, s.max_length) for s in SERIES], hidden=4, n_static=1)
    path = home.parent / "gru.onnx"
    path.write_bytes(model.to_onnx())
    signature = model.signature(SERIES, [FeatureSpec(name="age", minimum=0, maximum=120)])
    with registry_at(home) as registry:
        version = registry.register("gru-ews", path, signature=signature, alias="production")
        assert version.flavor == "trajectory"
    with serve(home, security=False) as (client, _):
        yield client, model


def test_served_through_records_and_v2_like_its_source(
    served: tuple[TestClient, GruModel],
) -> None:
    client, model = served
    as_of = "2026-03-01T14:00:00+01:00"
    instance: dict[str, Any] = {
        "age": 70,
        "as_of": as_of,
        "series": {
            "heart_rate": [["2026-03-01T12:00:00+01:00", 88], ["2026-03-01T13:00:00+01:00", 97]],
            "lactate": [["2026-03-01T11:30:00+01:00", 2.1]],
        },
    }
    answer = client.post("/v1/models/gru-ews/predict", json={"instances": [instance]})
    assert answer.status_code == 200, answer.text
    p_records = answer.json()["predictions"][0]["probabilities"]["1"]
    batch = {
        "heart_rate": Padded(np.array([[88.0, 97.0]]), np.array([[7200.0, 3600.0]]), np.array([2])),
        "lactate": Padded(np.array([[2.1]]), np.array([[9000.0]]), np.array([1])),
    }
    reference = model.predict(np.array([[70.0]]), batch)[0, 1]
    assert p_records == pytest.approx(reference, abs=1e-5)
    v2 = {
        "inputs": [
            {"name": "age", "datatype": "FP32", "shape": [1], "data": [70]},
            {
                "name": "heart_rate.values",
                "datatype": "FP32",
                "shape": [1, 3],
                "data": [88, 97, -1],
            },
            {
                "name": "heart_rate.times",
                "datatype": "FP32",
                "shape": [1, 3],
                "data": [7200, 3600, 5],
            },
            {"name": "heart_rate.lengths", "datatype": "INT32", "shape": [1], "data": [2]},
            {"name": "lactate.values", "datatype": "FP32", "shape": [1, 1], "data": [2.1]},
            {"name": "lactate.times", "datatype": "FP32", "shape": [1, 1], "data": [9000]},
            {"name": "lactate.lengths", "datatype": "INT32", "shape": [1], "data": [1]},
        ]
    }
    answer = client.post("/v2/models/gru-ews/infer", json=v2)
    assert answer.status_code == 200, answer.text
    probabilities = next(o for o in answer.json()["outputs"] if o["name"] == "probabilities")
    assert probabilities["data"][1] == pytest.approx(p_records, abs=1e-6)
    explained = client.post(
        "/v1/models/gru-ews/predict", json={"instances": [instance], "explain": True}
    )
    assert explained.status_code == 200, explained.text
    occlusion = explained.json()["explanation"][0]
    assert occlusion["method"] == "time-step occlusion"
    assert [p["hours_before_as_of"] for p in occlusion["series"]["heart_rate"]] == [2.0, 1.0]


def test_registered_without_a_signature_gets_its_layout(tmp_path: Path) -> None:
    model = GruModel.random([(s.name, s.max_length) for s in SERIES], hidden=3, n_static=1)
    path = tmp_path / "gru.onnx"
    path.write_bytes(model.to_onnx())
    with registry_at(tmp_path / "home") as registry:
        version = registry.register("gru-bare", path)
    assert version.flavor == "trajectory"
    signature = version.signature
    assert [s["name"] for s in signature["series"]] == ["heart_rate", "lactate"]
    assert signature["inputs"][0]["name"] == "static_0"
    assert signature["inputs"][1]["name"] == "heart_rate.length"

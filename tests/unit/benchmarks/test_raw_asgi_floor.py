"""The raw-ASGI floor `make bench` compares medserve with (benchmarks/raw_asgi.py).

The ratio only means something if the floor computes what medserve computes, from the body the
benchmark sends, under medserve's uvicorn settings: these tests check all three.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from benchmarks.raw_asgi import FloorApp, uvicorn_settings
from benchmarks.servers import v2_body
from benchmarks.training import LR, load_data, train_models

from medserve.core.runtimes.convert import convert_sklearn_to_onnx

URL = f"http://floor/v2/models/{LR}/infer"


@pytest.fixture(scope="module")
def frame() -> Any:
    x, _ = load_data()
    return x


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory, frame: Any) -> Path:
    """The file medserve would store for the bench LogisticRegression: its own verified
    conversion, with the feature names in the model's metadata."""
    lr = train_models()[LR]
    result = convert_sklearn_to_onnx(lr, frame.iloc[:50])
    assert result.accepted, result.reason
    assert result.onnx_bytes is not None
    path = tmp_path_factory.mktemp("floor") / "model.onnx"
    path.write_bytes(result.onnx_bytes)
    return path


def _direct(onnx_file: Path, rows: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return list(session.run(["label", "probabilities"], {"X": rows.astype(np.float32)}))


async def _post(app: FloorApp, body: bytes, url: str = URL) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.post(url, content=body, headers={"Content-Type": "application/json"})


def _output(answer: dict[str, Any], name: str) -> np.ndarray:
    (tensor,) = (o for o in answer["outputs"] if o["name"] == name)
    return np.asarray(tensor["data"]).reshape(tensor["shape"])


async def test_the_benchmark_body_gets_onnxruntimes_own_probabilities(
    onnx_file: Path, frame: Any
) -> None:
    rows = frame.iloc[100:107]  # both classes among them
    response = await _post(FloorApp(onnx_file, LR), v2_body(rows))
    assert response.status_code == 200, response.text
    answer = response.json()
    label, probabilities = _direct(onnx_file, rows.to_numpy())
    assert len(set(label.tolist())) == 2
    assert answer["model_name"] == LR
    np.testing.assert_array_equal(_output(answer, "label"), label)
    np.testing.assert_array_equal(
        _output(answer, "probabilities").astype(np.float32), probabilities
    )
    assert probabilities.shape == (7, 2)


async def test_one_tensor_per_feature_in_any_order_is_the_same_matrix(
    onnx_file: Path, frame: Any
) -> None:
    rows = frame.iloc[:3]
    tensors = [
        {"name": name, "shape": [3], "datatype": "FP32", "data": rows[name].tolist()}
        for name in reversed(rows.columns)
    ]
    app = FloorApp(onnx_file, LR)
    per_feature = await _post(app, json.dumps({"inputs": tensors}).encode())
    matrix = await _post(app, v2_body(rows))
    assert per_feature.status_code == 200, per_feature.text
    assert per_feature.json() == matrix.json()
    _, probabilities = _direct(onnx_file, rows.to_numpy())
    np.testing.assert_array_equal(
        _output(per_feature.json(), "probabilities").astype(np.float32), probabilities
    )


async def test_bodies_it_cannot_read_are_refused_not_guessed(onnx_file: Path, frame: Any) -> None:
    app = FloorApp(onnx_file, LR)
    narrow = v2_body(frame.iloc[:1, :29])
    assert (await _post(app, narrow)).status_code == 400
    assert (await _post(app, b"{not json")).status_code == 400
    missing = {"inputs": [{"name": "mean radius", "shape": [1], "datatype": "FP32", "data": [1]}]}
    assert (await _post(app, json.dumps(missing).encode())).status_code == 400
    other = await _post(app, v2_body(frame.iloc[:1]), url="http://floor/v2/models/x/infer")
    assert other.status_code == 404


def test_uvicorn_settings_are_medserves(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """medserve's run_server with uvicorn.run captured: same options, app and address aside."""
    import uvicorn

    from medserve.core.settings import Settings
    from medserve.serving.server import run_server

    # run_server writes the environment its workers read: give it a copy, restored afterwards
    environment = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "MEDSERVE_SECURITY",
            "MEDSERVE_WORKERS",
            "MEDSERVE_MIGRATE_ON_START",
            "PROMETHEUS_MULTIPROC_DIR",
        )
    }
    monkeypatch.setattr(os, "environ", environment)
    captured: dict[str, Any] = {}

    def fake_run(app: Any, **kwargs: Any) -> None:
        captured.update(kwargs)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    run_server(Settings(home=home, host="127.0.0.1", port=8123, workers=2), "x:y")
    assert {k: captured.pop(k) for k in ("host", "port", "workers")} == {
        "host": "127.0.0.1",
        "port": 8123,
        "workers": 2,
    }
    assert captured == uvicorn_settings()

"""Triton's gRPC client (``tritonclient[grpc]``, unmodified) against a real medserve process.

``grpc_triton_calls.py`` makes the calls in its own process (Triton's protocol module and the
kserve SDK's cannot be imported into one); this test compares what it saw with what REST
answers on the same server for the same rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.support import ServerProcess, free_port, start_server, writable_demo_home

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings

MODEL = "breast-cancer"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(
    demo_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, int]]:
    home, _ = writable_demo_home(demo_home, tmp_path_factory.mktemp("triton-grpc") / "home")
    registry = Registry.open(Settings(home=home))
    try:
        registry.set_alias(MODEL, "staging", 1, actor="test")
    finally:
        registry.close()
    port = free_port()
    process = start_server(home, env={"MEDSERVE_GRPC_PORT": str(port)})
    yield process, port
    process.stop()


def triton_calls(target: str, token: str, X: np.ndarray, tmp_path: Path) -> dict[str, Any]:
    matrix = tmp_path / "matrix.npy"
    np.save(matrix, X)
    done = subprocess.run(
        [sys.executable, "-m", "tests.contract.grpc_triton_calls", target, token, str(matrix)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def test_tritonclient_grpc_gets_rest_s_answers(
    server: tuple[ServerProcess, int], reference: Any, tmp_path: Path
) -> None:
    process, port = server
    X = reference.matrix(MODEL, 25)
    token = process.headers["Authorization"].removeprefix("Bearer ")
    found = triton_calls(f"127.0.0.1:{port}", token, X, tmp_path)

    assert (found["live"], found["ready"], found["model_ready"]) == (True, True, True)
    assert found["server_metadata"]["name"] == "medserve"
    metadata = found["model_metadata"]
    assert metadata["name"] == MODEL
    assert [t["name"] for t in metadata["inputs"]] == list(reference.models[MODEL].frame.columns)

    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(X.shape),
                "datatype": "FP32",
                "data": X.ravel().tolist(),
            }
        ]
    }
    rest = httpx.post(
        f"{process.url}/v2/models/{MODEL}/infer", json=body, headers=process.headers, timeout=30
    ).json()
    outputs = {o["name"]: o for o in rest["outputs"]}
    expected = np.asarray(outputs["probabilities"]["data"], dtype=np.float32).reshape(25, 2)
    for version in ("", "1", "production", "staging"):
        answer = found[f"infer:{version}"]
        assert answer["model_name"] == MODEL
        assert answer["model_version"] == "1"
        assert answer["id"] == f"triton-{version or 'bare'}"
        np.testing.assert_array_equal(
            np.asarray(answer["probabilities"], dtype=np.float32), expected
        )
        assert answer["label"] == outputs["label"]["data"]
        assert float(answer["threshold"]) == rest["parameters"]["threshold"]

    assert found["no_credential"] == "StatusCode.UNAUTHENTICATED"
    assert found["unknown_model"] == "StatusCode.NOT_FOUND"
    assert found["unknown_version"] == "StatusCode.NOT_FOUND"

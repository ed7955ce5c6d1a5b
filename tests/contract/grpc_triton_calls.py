"""The calls a Triton user makes with ``tritonclient.grpc``, run in a process of their own.

Triton's client carries its own ``inference.*`` protocol module (``grpc_service.proto``), which
cannot share protobuf's descriptor pool with the kserve SDK's (or medserve's) module in one
process, so ``test_grpc_tritonclient.py`` runs this script with the same interpreter and reads
the JSON it prints: every answer as plain values, every refusal as its status.

    python -m tests.contract.grpc_triton_calls HOST:PORT TOKEN MATRIX.npy [ROOT_CA.pem]
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

MODEL = "breast-cancer"


def _answer(result: Any) -> dict[str, Any]:
    response = result.get_response()
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "probabilities": result.as_numpy("probabilities").astype(np.float64).tolist(),
        "label": [v.decode() for v in result.as_numpy("label").ravel()],
        "threshold": response.parameters["threshold"].string_param,
    }


def _status(call: Any) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return str(exc.status())
    return "OK"


def main(argv: list[str]) -> dict[str, Any]:
    url, token, matrix_path = argv[:3]
    root = argv[3] if len(argv) > 3 else None
    X = np.load(matrix_path)
    headers = {"authorization": f"Bearer {token}"}
    client = triton.InferenceServerClient(url=url, ssl=root is not None, root_certificates=root)
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)  # raw_input_contents, as tritonclient always sends
    outputs = [triton.InferRequestedOutput("probabilities"), triton.InferRequestedOutput("label")]
    found: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(MODEL, headers=headers),
        "server_metadata": client.get_server_metadata(headers=headers, as_json=True),
        "model_metadata": client.get_model_metadata(MODEL, headers=headers, as_json=True),
    }
    for version in ("", "1", "production", "staging"):
        result = client.infer(
            MODEL,
            [tensor],
            model_version=version,
            outputs=outputs,
            request_id=f"triton-{version or 'bare'}",
            headers=headers,
        )
        found[f"infer:{version}"] = _answer(result)
    found["no_credential"] = _status(lambda: client.infer(MODEL, [tensor]))
    found["unknown_model"] = _status(lambda: client.infer("no-such", [tensor], headers=headers))
    found["unknown_version"] = _status(
        lambda: client.infer(MODEL, [tensor], model_version="99", headers=headers)
    )
    client.close()
    return found


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main(sys.argv[1:])) + "\n")

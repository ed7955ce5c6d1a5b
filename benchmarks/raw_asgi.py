"""``python -m benchmarks.raw_asgi``: the raw-ASGI floor, a server that does only the model's part.

A bare ASGI callable, no framework: read an Open Inference Protocol v2 body, decode it with
orjson, run one onnxruntime session (medserve's own session options: one intra-op thread) on the
ONNX file medserve serves, and answer a v2 JSON body. No authentication, audit, prediction log,
metrics, request ids or input validation beyond what decoding needs. It runs under medserve's own
uvicorn settings (``UVICORN_SETTINGS``, checked against ``medserve.serving.server.run_server`` by
tests/unit/benchmarks/test_raw_asgi_floor.py): uvloop, httptools through medserve's TCP_NODELAY
protocol class, the same worker count, and medserve's garbage-collector tuning at start-up. What
medserve costs above it is medserve's own work per request.

Both v2 input layouts medserve takes are read: one tensor ``[n, F]`` (what the benchmarks send,
``benchmarks.servers.v2_body``) and one tensor per feature, named as the model's metadata lists
them (the feature names medserve writes into the ONNX file it converts).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ENV_ONNX = "BENCH_FLOOR_ONNX"
ENV_NAME = "BENCH_FLOOR_MODEL"
FEATURE_NAMES_KEY = "medserve.feature_names"  # custom metadata of medserve's converted models

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_DATATYPE = {"int64": "INT64", "int32": "INT32", "float32": "FP32", "float64": "FP64"}


def uvicorn_settings() -> dict[str, Any]:
    """``medserve serve``'s uvicorn options, less the app, address and worker count."""
    from medserve.serving.server import NoDelayHttpToolsProtocol

    return {
        "factory": True,
        "http": NoDelayHttpToolsProtocol,
        "loop": "uvloop",
        "lifespan": "on",
        "access_log": False,
        "log_level": "warning",
        "timeout_graceful_shutdown": 30,
        "timeout_keep_alive": 30,
        "server_header": False,
        "date_header": False,
        "proxy_headers": bool(os.environ.get("FORWARDED_ALLOW_IPS")),
    }


class BadBodyError(ValueError):
    """A body the floor cannot turn into the model's matrix."""


class FloorApp:
    """One model, three routes: POST ``/v2/models/{name}/infer``, GET readiness, 404 otherwise."""

    def __init__(self, onnx_path: Path, model_name: str, model_version: str = "1") -> None:
        import onnxruntime as ort

        from medserve.core.runtimes.onnx_runtime import session_options

        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=session_options(1), providers=["CPUExecutionProvider"]
        )
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 2 or inputs[0].type != "tensor(float)":
            raise ValueError(f"{onnx_path}: the floor serves one float input [n, F] only")
        self.input_name = inputs[0].name
        width = inputs[0].shape[1]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.features: list[str] = list(json.loads(meta.get(FEATURE_NAMES_KEY, "[]")))
        self.width = width if isinstance(width, int) else len(self.features)
        self.column = {name: i for i, name in enumerate(self.features)}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.model_name = model_name
        self.model_version = model_version
        self.infer_path = f"/v2/models/{model_name}/infer"
        self.ready_paths = {"/v2/health/live", "/v2/health/ready", f"/v2/models/{model_name}/ready"}

    def matrix(self, body: Any) -> np.ndarray:
        """The float32 ``[n, F]`` matrix of a v2 body, in the model's column order."""
        try:
            inputs = body["inputs"]
            if len(inputs) == 1 and inputs[0]["name"] not in self.column:
                tensor = inputs[0]
                x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
            else:
                data = {t["name"]: t["data"] for t in inputs}
                if data.keys() != self.column.keys():
                    raise BadBodyError("per-feature tensors must name every feature once")
                columns = np.asarray([data[name] for name in self.features], dtype=np.float32)
                x = np.ascontiguousarray(columns.reshape(len(self.features), -1).T)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadBodyError(f"not a v2 body this model takes: {exc}") from exc
        if x.ndim != 2 or x.shape[1] != self.width:
            raise BadBodyError(f"the matrix must be [n, {self.width}], got {list(x.shape)}")
        return x

    def infer(self, raw: bytes) -> bytes:
        x = self.matrix(orjson.loads(raw))
        results = self.session.run(self.output_names, {self.input_name: x})
        outputs = [
            {
                "name": name,
                "datatype": _DATATYPE.get(str(array.dtype), "BYTES"),
                "shape": list(array.shape),
                "data": array.ravel().tolist(),
            }
            for name, array in zip(self.output_names, results, strict=True)
        ]
        answer = {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "outputs": outputs,
        }
        return orjson.dumps(answer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method == "POST" and path == self.infer_path:
            raw = await _read_body(receive)
            try:
                status, payload = 200, self.infer(raw)
            except (BadBodyError, orjson.JSONDecodeError) as exc:
                status, payload = 400, orjson.dumps({"error": str(exc)})
        elif method == "GET" and path in self.ready_paths:
            status, payload = 200, b'{"ready":true}'
        else:
            status, payload = 404, b'{"error":"not found"}'
        headers = [(b"content-type", b"application/json")]
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    from medserve.serving.server import tune_gc

    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            tune_gc()  # as medserve's app does once its models are loaded
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def app_from_env() -> FloorApp:
    """The app of one uvicorn worker (workers rebuild it from the environment ``serve`` set)."""
    return FloorApp(Path(os.environ[ENV_ONNX]), os.environ[ENV_NAME])


def serve(onnx_path: Path, model_name: str, host: str, port: int, workers: int) -> None:
    import uvicorn

    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"the floor has no authentication: bind a loopback address, not {host}")
    os.environ[ENV_ONNX] = str(Path(onnx_path).resolve())
    os.environ[ENV_NAME] = model_name
    uvicorn.run(
        "benchmarks.raw_asgi:app_from_env",
        host=host,
        port=port,
        workers=workers,
        **uvicorn_settings(),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--onnx", type=Path, required=True, help="the ONNX file medserve serves")
    parser.add_argument("--name", required=True, help="model name in the URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    serve(args.onnx, args.name, args.host, args.port, args.workers)


if __name__ == "__main__":
    main()

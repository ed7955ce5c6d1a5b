"""ONNX Runtime: the fast path. Everything that can be decided once is decided at load.

On one row the session call itself costs a few microseconds, so Python work around it matters:
input names, dtypes and the split strategy are precomputed, and the per-call work is one cast
(skipped when the matrix already has the declared dtype), one ``run`` and a reshape.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from medserve.core.errors import ModelLoadError
from medserve.core.runtimes._common import (
    META_CLASS_LABELS,
    META_TASK,
    classifier_outputs,
    oip_datatype,
    regressor_outputs,
    versions,
)
from medserve.core.runtimes.base import RuntimeMetadata, Task

_ONNX_TO_NUMPY: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}
_LABEL_TYPES = {"tensor(int64)", "tensor(int32)", "tensor(string)"}
_FLOAT_TYPES = {"tensor(float)", "tensor(double)", "tensor(float16)"}

Feeder = Callable[[npt.NDArray[Any]], dict[str, npt.NDArray[Any]]]


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    """One thread per session by default: the server scales with processes, not threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


def open_session(model: bytes, intra_op_threads: int = 1) -> ort.InferenceSession:
    """A CPU session of ``model`` (every ONNX flavor opens its graph so), or ModelLoadError."""
    try:
        return ort.InferenceSession(
            model,
            sess_options=session_options(intra_op_threads),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelLoadError(f"onnxruntime could not load the model: {exc}") from exc


class OnnxRuntime:
    """Serves an ONNX model: skl2onnx classifiers/regressors or any tabular ONNX graph."""

    def __init__(self, model: bytes, *, intra_op_threads: int = 1) -> None:
        self._session = open_session(model, intra_op_threads)
        self._run = _fast_run(self._session)
        inputs = self._session.get_inputs()
        self._feed, n_features = _make_feeder(inputs)
        props = self._session.get_modelmeta().custom_metadata_map
        self._task, self._output_names, self._shape_out = _plan_outputs(
            self._session.get_outputs(), props.get(META_TASK)
        )
        self._metadata = self._build_metadata(model, props, n_features)

    @classmethod
    def from_path(cls, path: Path, *, intra_op_threads: int = 1) -> OnnxRuntime:
        return cls(Path(path).read_bytes(), intra_op_threads=intra_op_threads)

    def predict(self, X: npt.NDArray[Any]) -> dict[str, np.ndarray]:
        return self._shape_out(self._run(self._output_names, self._feed(X)))

    def metadata(self) -> RuntimeMetadata:
        return self._metadata

    def _build_metadata(
        self, model: bytes, props: dict[str, str], n_features: int
    ) -> RuntimeMetadata:
        libs = versions("onnxruntime", "onnx")
        if self._task == "regression":
            value_type = self._session.get_outputs()[0].type
            dtype = _ONNX_TO_NUMPY.get(value_type, np.float32)
            return RuntimeMetadata(
                runtime="onnxruntime",
                task="regression",
                n_features=n_features,
                outputs=regressor_outputs(oip_datatype(np.dtype(dtype))),
                library_versions=libs,
            )
        labels: list[Any] | None = None
        if META_CLASS_LABELS in props:
            labels = list(json.loads(props[META_CLASS_LABELS]))
        else:
            labels = _class_labels_from_graph(model)
        if labels is None:
            width = self._session.get_outputs()[1].shape
            k = width[1] if len(width) == 2 and isinstance(width[1], int) else None
            labels = list(range(k)) if k else None
        n_classes = len(labels) if labels is not None else -1
        return RuntimeMetadata(
            runtime="onnxruntime",
            task="classification",
            n_features=n_features,
            class_labels=labels,
            outputs=classifier_outputs(labels or [], n_classes),
            library_versions=libs,
        )


def _fast_run(session: ort.InferenceSession) -> Callable[[list[str], dict[str, Any]], list[Any]]:
    """The C++ session's ``run``, skipping the Python wrapper's per-call checks (~3 µs a call).

    The wrapper re-validates input names on every call; ours are fixed at load and the matrix
    was validated against the signature upstream. Falls back to the public API if onnxruntime
    ever drops the private attribute.
    """
    inner = getattr(session, "_sess", None)
    if inner is None or not hasattr(inner, "run"):
        public: Callable[[list[str], dict[str, Any]], list[Any]] = session.run
        return public
    run_options = ort.RunOptions()
    inner_run = inner.run

    def run(output_names: list[str], feeds: dict[str, Any]) -> list[Any]:
        return inner_run(output_names, feeds, run_options)  # type: ignore[no-any-return]

    return run


def _make_feeder(inputs: list[Any]) -> tuple[Feeder, int]:
    """Decide once how a (rows x features) matrix becomes the session's input dict."""
    for arg in inputs:
        if arg.type not in _ONNX_TO_NUMPY:
            raise ModelLoadError(f"ONNX input {arg.name!r} has unsupported type {arg.type}")
    if len(inputs) == 1 and len(inputs[0].shape) == 2:
        name = inputs[0].name
        dtype = np.dtype(_ONNX_TO_NUMPY[inputs[0].type])
        width = inputs[0].shape[1]
        n_features = width if isinstance(width, int) else 0

        if dtype == np.object_:

            def feed_strings(X: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
                return {name: X.astype(str).astype(object)}

            return feed_strings, n_features

        def feed_one(X: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
            return {name: X if X.dtype == dtype else X.astype(dtype)}

        return feed_one, n_features

    # one input per column (skl2onnx with named columns): shape (n, 1) or (n,)
    columns: list[tuple[str, int, np.dtype[Any], bool]] = []
    for i, arg in enumerate(inputs):
        if len(arg.shape) not in (1, 2):
            raise ModelLoadError(f"ONNX input {arg.name!r} must be 1-D or 2-D, got {arg.shape}")
        columns.append((arg.name, i, np.dtype(_ONNX_TO_NUMPY[arg.type]), len(arg.shape) == 2))

    def feed_columns(X: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        feeds: dict[str, npt.NDArray[Any]] = {}
        for name, i, dtype, as_column in columns:
            col = X[:, i : i + 1] if as_column else X[:, i]
            if dtype == np.object_:
                feeds[name] = col.astype(str).astype(object)
            else:
                feeds[name] = np.ascontiguousarray(col, dtype=dtype)
        return feeds

    return feed_columns, len(inputs)


def _plan_outputs(
    outputs: list[Any], declared_task: str | None
) -> tuple[Task, list[str], Callable[[list[Any]], dict[str, np.ndarray]]]:
    by_name = {o.name: o for o in outputs}
    for o in outputs:
        if not o.type.startswith("tensor("):
            raise ModelLoadError(
                f"ONNX output {o.name!r} is {o.type}; medserve needs plain tensors "
                "(convert scikit-learn classifiers with zipmap disabled)"
            )
    label = probs = None
    if "label" in by_name and "probabilities" in by_name:
        label, probs = by_name["label"], by_name["probabilities"]
    elif len(outputs) == 2 and declared_task != "regression":
        first, second = outputs
        if first.type in _LABEL_TYPES and second.type in _FLOAT_TYPES:
            label, probs = first, second
        elif second.type in _LABEL_TYPES and first.type in _FLOAT_TYPES:
            label, probs = second, first
    if label is not None and probs is not None:
        names = [label.name, probs.name]

        def shape_classifier(res: list[Any]) -> dict[str, np.ndarray]:
            p = res[1]
            return {
                "label": res[0].reshape(-1),
                "probabilities": p if p.dtype == np.float32 else p.astype(np.float32),
            }

        return "classification", names, shape_classifier
    value = by_name.get("variable", outputs[0])
    if value.type not in _FLOAT_TYPES:
        raise ModelLoadError(
            f"cannot tell what ONNX output {value.name!r} ({value.type}) is: expected "
            "'label' + 'probabilities' for a classifier or one float output for a regressor"
        )

    def shape_regressor(res: list[Any]) -> dict[str, np.ndarray]:
        return {"value": res[0].reshape(-1)}

    return "regression", [value.name], shape_regressor


def _class_labels_from_graph(model: bytes) -> list[Any] | None:
    """Class labels from ai.onnx.ml classifier nodes (models not converted by medserve)."""
    import onnx  # noqa: PLC0415 (heavy: onnx, kept off the serving path)

    graph = onnx.load_model_from_string(model).graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "classlabels_int64s" and attr.ints:
                return [int(v) for v in attr.ints]
            if attr.name == "classlabels_strings" and attr.strings:
                return [v.decode() for v in attr.strings]
    return None


__all__ = ["OnnxRuntime", "session_options"]

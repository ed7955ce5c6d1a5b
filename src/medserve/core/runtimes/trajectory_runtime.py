"""The ``trajectory`` flavor: a sequence model (a GRU, say) over patient series, on onnxruntime.

(The name ``sequence`` already means DNA.) The ONNX graph takes, per series ``s``, the padded
tensors ``s.values`` and ``s.times`` (float ``[n, max_length]``, times in seconds before
``as_of``, oldest first) and ``s.lengths`` (int32 ``[n]``: the graph masks or passes them as a
recurrent op's ``sequence_lens``, so padding is never read), plus an optional ``static`` float
``[n, k]``. Its metadata property ``medserve.trajectory`` (JSON) names the series and their
``max_length`` and the static width: the runtime is self-describing, and the model matrix it gets
from the data plane is the static inputs followed by :func:`medserve.core.series.pack`'s layout,
which it unpacks into those feeds. Outputs: ``probabilities`` ``[n, k]`` (a classifier; labels
from ``medserve.class_labels`` or 0..k-1) or one float output (a risk score or value).

Explanations by time-step occlusion (:meth:`TrajectoryRuntime.explain_time_steps`): each
measurement is removed in turn and the change in the output is its contribution. The data plane
finds such a runtime by :class:`medserve.core.series.TimeStepExplainer`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medserve.core.errors import ModelLoadError
from medserve.core.registry.signature import FeatureSpec, Signature
from medserve.core.runtimes._common import (
    META_CLASS_LABELS,
    classifier_outputs,
    regressor_outputs,
    versions,
)
from medserve.core.runtimes.base import RuntimeMetadata
from medserve.core.runtimes.onnx_runtime import open_session
from medserve.core.series import Padded, SeriesSpec, padded_columns, unpack

META_TRAJECTORY = "medserve.trajectory"
STATIC_INPUT = "static"


class TrajectoryRuntime:
    def __init__(self, model: bytes, *, intra_op_threads: int = 1) -> None:
        self._session = open_session(model, intra_op_threads)
        props = self._session.get_modelmeta().custom_metadata_map
        try:
            layout = json.loads(props[META_TRAJECTORY])
            self.layout: list[tuple[str, int]] = [
                (str(s["name"]), int(s["max_length"])) for s in layout["series"]
            ]
            self.n_static = int(layout.get("static", 0))
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelLoadError(
                f"a trajectory model needs the metadata property {META_TRAJECTORY!r}: "
                '{"series": [{"name", "max_length"}], "static": k}'
            ) from exc
        names = {i.name for i in self._session.get_inputs()}
        wanted = {f"{s}.{p}" for s, _ in self.layout for p in ("values", "times", "lengths")}
        if self.n_static:
            wanted.add(STATIC_INPUT)
        if names != wanted:
            raise ModelLoadError(
                f"the trajectory model's inputs {sorted(names)} are not those its layout "
                f"declares: {sorted(wanted)}"
            )
        self._types = {
            i.name: np.int64 if i.type == "tensor(int64)" else np.int32
            for i in self._session.get_inputs()
            if i.name.endswith(".lengths")
        }
        outputs = self._session.get_outputs()
        self._output_names = [o.name for o in outputs]
        self._prob_index = next(
            (k for k, o in enumerate(outputs) if o.name == "probabilities"), None
        )
        n_features = self.n_static + sum(1 + 2 * width for _, width in self.layout)
        libs = versions("onnxruntime", "onnx")
        if self._prob_index is not None:
            width = outputs[self._prob_index].shape
            k = width[1] if len(width) == 2 and isinstance(width[1], int) else 2
            labels = (
                list(json.loads(props[META_CLASS_LABELS]))
                if META_CLASS_LABELS in props
                else list(range(k))
            )
            self._labels = np.asarray(labels)
            self._metadata = RuntimeMetadata(
                runtime="onnxruntime (trajectory)",
                task="classification",
                n_features=n_features,
                class_labels=labels,
                outputs=classifier_outputs(labels, len(labels)),
                library_versions=libs,
            )
        else:
            self._metadata = RuntimeMetadata(
                runtime="onnxruntime (trajectory)",
                task="regression",
                n_features=n_features,
                outputs=regressor_outputs("FP32"),
                library_versions=libs,
            )

    @classmethod
    def from_path(cls, path: Path, *, intra_op_threads: int = 1) -> TrajectoryRuntime:
        return cls(Path(path).read_bytes(), intra_op_threads=intra_op_threads)

    def metadata(self) -> RuntimeMetadata:
        return self._metadata

    def feeds(self, X: npt.NDArray[Any]) -> dict[str, np.ndarray]:
        """The session's inputs from the model matrix (static, then the packed series)."""
        matrix = np.asarray(X, dtype=np.float64)
        batch = unpack(self.layout, matrix, self.n_static)
        return self.feeds_of(matrix[:, : self.n_static], batch)

    def feeds_of(self, static: np.ndarray, batch: dict[str, Padded]) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for name, _ in self.layout:
            padded = batch[name]
            mask = padded.mask
            feeds[f"{name}.values"] = np.where(mask, padded.values, 0.0).astype(np.float32)
            feeds[f"{name}.times"] = np.where(mask, padded.times, 0.0).astype(np.float32)
            feeds[f"{name}.lengths"] = padded.lengths.astype(self._types[f"{name}.lengths"])
        if self.n_static:
            feeds[STATIC_INPUT] = np.ascontiguousarray(static, dtype=np.float32)
        return feeds

    def _outputs(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._session.run(self._output_names, feeds)
        if self._prob_index is not None:
            probabilities = np.asarray(result[self._prob_index], dtype=np.float32)
            return {
                "label": self._labels[np.argmax(probabilities, axis=1)],
                "probabilities": probabilities,
            }
        return {"value": np.asarray(result[0], dtype=np.float32).reshape(-1)}

    def predict(self, X: npt.NDArray[Any]) -> dict[str, np.ndarray]:
        return self._outputs(self.feeds(X))

    def explain_time_steps(self, X: npt.NDArray[Any], target: int = -1) -> list[dict[str, Any]]:
        """Per row, per series and measurement, how much the output (the ``target`` class's
        probability, or the value) drops when that one measurement is removed: a time-step
        occlusion explanation. Times are given relative to as_of (hours), never as dates."""
        matrix = np.asarray(X, dtype=np.float64)
        base_batch = unpack(self.layout, matrix, self.n_static)
        static = matrix[:, : self.n_static]
        base = self._score(self._outputs(self.feeds_of(static, base_batch)), target)
        explanations: list[dict[str, Any]] = []
        for i in range(matrix.shape[0]):
            row_static = static[i : i + 1]
            per_series: dict[str, list[dict[str, float]]] = {}
            for name, _ in self.layout:
                padded = base_batch[name]
                length = int(padded.lengths[i])
                if not length:
                    per_series[name] = []
                    continue
                # one batch: row i repeated, each copy without one of its measurements
                keep = ~np.eye(length, dtype=bool)
                width = padded.values.shape[1]
                values = np.zeros((length, width))
                times = np.zeros((length, width))
                for k in range(length):
                    values[k, : length - 1] = padded.values[i, :length][keep[k]]
                    times[k, : length - 1] = padded.times[i, :length][keep[k]]
                occluded = {
                    other: Padded(
                        np.repeat(p.values[i : i + 1], length, 0),
                        np.repeat(p.times[i : i + 1], length, 0),
                        np.repeat(p.lengths[i : i + 1], length, 0),
                    )
                    for other, p in base_batch.items()
                }
                occluded[name] = Padded(values, times, np.full(length, length - 1))
                scores = self._score(
                    self._outputs(self.feeds_of(np.repeat(row_static, length, 0), occluded)),
                    target,
                )
                per_series[name] = [
                    {
                        "hours_before_as_of": round(float(padded.times[i, k]) / 3600.0, 4),
                        "value": float(padded.values[i, k]),
                        "contribution": float(base[i] - scores[k]),
                    }
                    for k in range(length)
                ]
            explanations.append(
                {"method": "time-step occlusion", "output": float(base[i]), "series": per_series}
            )
        return explanations

    def _score(self, outputs: dict[str, np.ndarray], target: int) -> np.ndarray:
        if "probabilities" in outputs:
            return np.asarray(outputs["probabilities"][:, target], dtype=np.float64)
        return np.asarray(outputs["value"], dtype=np.float64)


def is_trajectory(path: Path) -> bool:
    """Whether an ONNX file declares the trajectory layout (it is registered as that flavor)."""
    import onnx  # noqa: PLC0415 (heavy: onnx, only at registration)

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not readable as ONNX: the onnx flavor's loader says why
        return False
    return any(p.key == META_TRAJECTORY for p in model.metadata_props)


def layout_signature(path: Path) -> Signature:
    """The signature a trajectory file implies when none is given: its static inputs (named
    ``static_0`` ...; rename them by editing the signature), then the padded layout of its
    series (no unit, no ``max_gap``: add them the same way)."""
    runtime = TrajectoryRuntime.from_path(path)
    series = [SeriesSpec(name=name, max_length=width) for name, width in runtime.layout]
    static = [FeatureSpec(name=f"static_{k}") for k in range(runtime.n_static)]
    padded = [FeatureSpec(name=c) for c in padded_columns(series)]
    return Signature(inputs=static + padded, series=series)


__all__ = [
    "META_TRAJECTORY",
    "STATIC_INPUT",
    "TrajectoryRuntime",
    "is_trajectory",
    "layout_signature",
]

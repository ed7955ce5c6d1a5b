"""Small helpers the runtimes share: OIP v2 datatypes and library versions."""

from __future__ import annotations

from importlib import metadata as importlib_metadata
from typing import Any

import numpy as np

from medserve.core.runtimes.base import TensorSpec

# keys of ONNX model metadata_props that medserve writes at conversion and reads at load
META_TASK = "medserve.task"
META_CLASS_LABELS = "medserve.class_labels"
META_FEATURE_NAMES = "medserve.feature_names"


def oip_datatype(dtype: np.dtype[Any]) -> str:
    """The Open Inference Protocol v2 datatype for a numpy dtype (strings are BYTES)."""
    kind = np.dtype(dtype)
    if kind.kind in {"U", "S", "O"}:
        return "BYTES"
    if kind == np.bool_:
        return "BOOL"
    return {
        "float16": "FP16",
        "float32": "FP32",
        "float64": "FP64",
        "int8": "INT8",
        "int16": "INT16",
        "int32": "INT32",
        "int64": "INT64",
        "uint8": "UINT8",
        "uint16": "UINT16",
        "uint32": "UINT32",
        "uint64": "UINT64",
    }[kind.name]


def classifier_outputs(labels: np.ndarray | list[Any], n_classes: int) -> list[TensorSpec]:
    label_type = oip_datatype(np.asarray(labels).dtype) if len(labels) else "INT64"
    return [
        TensorSpec("label", label_type, [-1]),
        TensorSpec("probabilities", "FP32", [-1, n_classes]),
    ]


def regressor_outputs(datatype: str = "FP32") -> list[TensorSpec]:
    return [TensorSpec("value", datatype, [-1])]


def versions(*packages: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in packages:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


def plain_labels(labels: np.ndarray | list[Any]) -> list[Any]:
    """Class labels as plain Python values (JSON-able), preserving their order."""
    return [v.item() if isinstance(v, np.generic) else v for v in list(labels)]

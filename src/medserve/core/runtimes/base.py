"""One small protocol every runtime implements; the data plane never knows which framework runs.

Contract for ``predict``: ``X`` is a 2-D array with one row per instance and one column per
signature input, in signature order. It is ``float32`` when every input is numeric or boolean,
otherwise ``object`` (strings for categorical columns). The result maps output names to arrays
whose first dimension is the number of rows:

* classifiers: ``"label"`` shape (n,) holding class labels, ``"probabilities"`` shape (n, k)
  float32 with columns in ``metadata().class_labels`` order;
* regressors: ``"value"`` shape (n,) float32 (or float64).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

# generation and embedding: foundation models (features/llm), served through /openai/v1, whose
# ``predict`` refuses tabular input.
Task = Literal["classification", "regression", "generation", "embedding"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # Open Inference Protocol v2 datatype: FP32, FP64, INT64, BOOL, BYTES, ...
    shape: list[int]  # -1 for a variable dimension


@dataclass(frozen=True)
class RuntimeMetadata:
    runtime: str  # e.g. "onnxruntime", "skops", "xgboost", "lightgbm"
    task: Task
    n_features: int
    class_labels: list[Any] | None = None  # classifiers only, in probability-column order
    outputs: list[TensorSpec] = field(default_factory=list)
    library_versions: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Runtime(Protocol):
    def predict(self, X: npt.NDArray[Any]) -> dict[str, np.ndarray]: ...

    def metadata(self) -> RuntimeMetadata: ...

"""LightGBM Booster from its text model format (never pickle).

The task comes from the ``objective=`` header line. LightGBM boosters do not keep the original
class labels, so classifiers report ``0..k-1``, which is what LGBMClassifier trains on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medserve.core.errors import ModelLoadError
from medserve.core.runtimes._common import classifier_outputs, regressor_outputs, versions
from medserve.core.runtimes.base import RuntimeMetadata

_BINARY = {"binary", "cross_entropy", "xentropy"}
_MULTI = {"multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr"}


def _header(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("Tree="):
            break
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value
    return found


class LightGBMRuntime:
    def __init__(self, model_text: str, *, intra_op_threads: int = 1) -> None:
        import lightgbm as lgb  # noqa: PLC0415 (optional extra: lightgbm)

        try:
            # params passed here are ignored (with a warning) for a model string, so the
            # thread count goes with each predict call instead
            self._booster = lgb.Booster(model_str=model_text)
        except lgb.basic.LightGBMError as exc:
            raise ModelLoadError(f"lightgbm could not load the model: {exc}") from exc
        self._threads = intra_op_threads
        header = _header(model_text)
        objective = header.get("objective", "regression").split(" ", 1)[0]
        n_features = self._booster.num_feature()
        libs = versions("lightgbm", "numpy")
        if objective in _BINARY:
            self._mode = "binary"
            labels: list[Any] = [0, 1]
        elif objective in _MULTI:
            self._mode = "multi"
            labels = list(range(int(header.get("num_class", "1"))))
        else:
            self._mode = "regression"
            self._metadata = RuntimeMetadata(
                runtime="lightgbm",
                task="regression",
                n_features=n_features,
                outputs=regressor_outputs(),
                library_versions=libs,
            )
            return
        self._labels = np.asarray(labels, dtype=np.int64)
        self._metadata = RuntimeMetadata(
            runtime="lightgbm",
            task="classification",
            n_features=n_features,
            class_labels=labels,
            outputs=classifier_outputs(self._labels, len(labels)),
            library_versions=libs,
        )

    @classmethod
    def from_path(cls, path: Path, *, intra_op_threads: int = 1) -> LightGBMRuntime:
        return cls(Path(path).read_text(encoding="utf-8"), intra_op_threads=intra_op_threads)

    def predict(self, X: npt.NDArray[Any]) -> dict[str, np.ndarray]:
        raw = np.asarray(self._booster.predict(X, num_threads=self._threads))
        if self._mode == "regression":
            return {"value": raw.astype(np.float32).reshape(-1)}
        if self._mode == "binary":
            p1 = raw.astype(np.float64).reshape(-1)
            probs = np.column_stack([1.0 - p1, p1]).astype(np.float32)
        else:
            probs = raw.astype(np.float32)
        return {"label": self._labels[np.argmax(probs, axis=1)], "probabilities": probs}

    def metadata(self) -> RuntimeMetadata:
        return self._metadata

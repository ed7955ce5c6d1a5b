"""XGBoost Booster from its own JSON or UBJSON format (never pickle).

Whether the model classifies is read from the objective; XGBoost's classifiers always use
labels ``0..k-1``, so those are the class labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import softmax

from medserve.core.errors import ModelLoadError
from medserve.core.runtimes._common import classifier_outputs, regressor_outputs, versions
from medserve.core.runtimes.base import RuntimeMetadata


class XGBoostRuntime:
    def __init__(self, model: bytes, *, intra_op_threads: int = 1) -> None:
        import xgboost as xgb  # noqa: PLC0415 (optional extra: xgboost)

        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(model))  # JSON or UBJSON, told apart by content
        except xgb.core.XGBoostError as exc:
            raise ModelLoadError(f"xgboost could not load the model: {exc}") from exc
        booster.set_param({"nthread": intra_op_threads})
        self._booster = booster
        config = json.loads(booster.save_config())["learner"]
        self.objective: str = config["objective"]["name"]
        n_class = int(config["learner_model_param"].get("num_class", "0") or 0)
        n_features = booster.num_features()
        libs = versions("xgboost", "numpy")
        if self.objective.startswith("binary:"):
            self._mode = "binary"
            labels: list[Any] = [0, 1]
        elif self.objective.startswith("multi:"):
            self._mode = "multi"
            labels = list(range(n_class))
        else:
            self._mode = "regression"
            self._metadata = RuntimeMetadata(
                runtime="xgboost",
                task="regression",
                n_features=n_features,
                outputs=regressor_outputs(),
                library_versions=libs,
            )
            return
        self._labels = np.asarray(labels, dtype=np.int64)
        self._metadata = RuntimeMetadata(
            runtime="xgboost",
            task="classification",
            n_features=n_features,
            class_labels=labels,
            outputs=classifier_outputs(self._labels, len(labels)),
            library_versions=libs,
        )

    @classmethod
    def from_path(cls, path: Path, *, intra_op_threads: int = 1) -> XGBoostRuntime:
        return cls(Path(path).read_bytes(), intra_op_threads=intra_op_threads)

    def predict(self, X: npt.NDArray[Any]) -> dict[str, np.ndarray]:
        if self._mode == "regression":
            out = self._booster.inplace_predict(X)
            return {"value": np.asarray(out, dtype=np.float32).reshape(-1)}
        if self._mode == "binary":
            if self.objective == "binary:logitraw":
                margin = self._booster.inplace_predict(X, predict_type="margin")
                p1 = 1.0 / (1.0 + np.exp(-np.asarray(margin, dtype=np.float64)))
            else:
                p1 = np.asarray(self._booster.inplace_predict(X), dtype=np.float64)
            p1 = p1.reshape(-1)
            probs = np.column_stack([1.0 - p1, p1]).astype(np.float32)
        elif self.objective == "multi:softprob":
            probs = np.asarray(self._booster.inplace_predict(X), dtype=np.float32)
        else:  # multi:softmax returns class indices; rebuild probabilities from margins
            margin = np.asarray(self._booster.inplace_predict(X, predict_type="margin"))
            probs = softmax(margin, axis=1).astype(np.float32)
        return {"label": self._labels[np.argmax(probs, axis=1)], "probabilities": probs}

    def metadata(self) -> RuntimeMetadata:
        return self._metadata

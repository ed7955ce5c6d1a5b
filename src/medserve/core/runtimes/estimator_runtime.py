"""A fitted scikit-learn-compatible estimator behind the Runtime protocol.

This is the fallback when ONNX conversion was not verified: correct first, fast second. An
estimator fitted on a DataFrame gets a DataFrame with the same column names, because its
pipeline may select columns by name and scikit-learn warns (or fails) on bare arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from medserve.core.errors import ModelLoadError
from medserve.core.runtimes._common import (
    classifier_outputs,
    plain_labels,
    regressor_outputs,
    versions,
)
from medserve.core.runtimes.base import RuntimeMetadata


class EstimatorRuntime:
    def __init__(self, estimator: Any, *, runtime: str) -> None:
        if not hasattr(estimator, "predict"):
            raise ModelLoadError(f"{type(estimator).__name__} has no predict method")
        self.estimator = estimator
        names = getattr(estimator, "feature_names_in_", None)
        self._feature_names: list[str] | None = (
            [str(n) for n in names] if names is not None else None
        )
        classes = getattr(estimator, "classes_", None)
        self._is_classifier = classes is not None and hasattr(estimator, "predict_proba")
        n_features = int(getattr(estimator, "n_features_in_", 0) or 0)
        libs = versions("scikit-learn", "skops", "numpy")
        if self._is_classifier:
            labels = plain_labels(np.asarray(classes))
            self._metadata = RuntimeMetadata(
                runtime=runtime,
                task="classification",
                n_features=n_features,
                class_labels=labels,
                outputs=classifier_outputs(np.asarray(classes), len(labels)),
                library_versions=libs,
            )
        else:
            self._metadata = RuntimeMetadata(
                runtime=runtime,
                task="regression",
                n_features=n_features,
                outputs=regressor_outputs("FP64"),
                library_versions=libs,
            )

    def predict(self, X: npt.NDArray[Any]) -> dict[str, np.ndarray]:
        data = self._frame(X)
        if self._is_classifier:
            return {
                "label": np.asarray(self.estimator.predict(data)).reshape(-1),
                "probabilities": np.asarray(self.estimator.predict_proba(data), dtype=np.float32),
            }
        return {"value": np.asarray(self.estimator.predict(data), dtype=np.float64).reshape(-1)}

    def metadata(self) -> RuntimeMetadata:
        return self._metadata

    def _frame(self, X: npt.NDArray[Any]) -> Any:
        if self._feature_names is None:
            return X
        import pandas as pd  # noqa: PLC0415 (heavy: pandas, kept off the serving path)

        frame = pd.DataFrame(X, columns=self._feature_names)
        return frame.infer_objects() if X.dtype == np.object_ else frame

"""pickle/joblib models: loading them runs arbitrary code, so only behind the trust flag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medserve.core.errors import ModelLoadError
from medserve.core.importers.formats import ensure_safe
from medserve.core.runtimes.estimator_runtime import EstimatorRuntime


def load_pickle_estimator(path: Path, *, trust_pickle: bool) -> Any:
    ensure_safe("pickle", trust_pickle=trust_pickle)
    # lazy import (heavy: joblib, kept off the serving path)
    import joblib  # reads plain pickles as well as joblib files  # noqa: PLC0415

    try:
        return joblib.load(Path(path))
    except Exception as exc:
        raise ModelLoadError(f"could not unpickle the model: {type(exc).__name__}") from exc


class PickleRuntime(EstimatorRuntime):
    def __init__(self, estimator: Any) -> None:
        super().__init__(estimator, runtime="pickle")

    @classmethod
    def from_path(cls, path: Path, *, trust_pickle: bool = False) -> PickleRuntime:
        return cls(load_pickle_estimator(path, trust_pickle=trust_pickle))

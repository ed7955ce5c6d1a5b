"""scikit-learn models stored with skops: loaded without executing arbitrary code.

skops lists the types in a file it does not trust by default. We additionally trust types from
scikit-learn, numpy and scipy (and builtins/collections), which is what a plain fitted estimator
contains; anything else (custom classes, other libraries) needs the explicit trust flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medserve.errors import ModelLoadError, UnsafeArtifactError
from medserve.runtimes.estimator_runtime import EstimatorRuntime

TRUSTED_MODULE_ROOTS = frozenset({"sklearn", "numpy", "scipy", "builtins", "collections"})


def _is_trusted(type_name: str) -> bool:
    return type_name.split(".", 1)[0] in TRUSTED_MODULE_ROOTS


def load_skops_estimator(path: Path, *, trust: bool = False) -> Any:
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(file=Path(path))
    except Exception as exc:
        raise ModelLoadError(f"not a readable skops file: {type(exc).__name__}: {exc}") from exc
    refused = sorted(t for t in untrusted if not _is_trusted(t))
    if refused and not trust:
        raise UnsafeArtifactError(
            "the skops file contains types outside scikit-learn/numpy/scipy that could run code "
            f"when loaded: {', '.join(refused)}. Pass --trust-pickle only if you trust its source."
        )
    try:
        return skops.io.load(Path(path), trusted=list(untrusted))
    except Exception as exc:
        raise ModelLoadError(
            f"skops could not load the model: {type(exc).__name__}: {exc}"
        ) from exc


class SkopsRuntime(EstimatorRuntime):
    def __init__(self, estimator: Any) -> None:
        super().__init__(estimator, runtime="skops")

    @classmethod
    def from_path(cls, path: Path, *, trust: bool = False) -> SkopsRuntime:
        return cls(load_skops_estimator(path, trust=trust))

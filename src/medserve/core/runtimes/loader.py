"""One entry point from a stored artifact to a runtime, by flavor name.

The core flavors are listed here; capabilities add theirs (image, text, sequence, ensemble) as
extensions (``Extension.runtime_flavors``), so the loader imports none of them. Each loader imports
its framework itself, so a server that serves only ONNX never imports xgboost or lightgbm.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from medserve.core.errors import UnsupportedFormatError
from medserve.core.extensions import FlavorLoader, FlavorOptions, extensions
from medserve.core.runtimes.base import Runtime

if TYPE_CHECKING:
    from medserve.core.artifacts import ArtifactStore


def _onnx(path: Path, options: FlavorOptions) -> Runtime:
    # lazy import (onnxruntime only when an ONNX version loads)
    from medserve.core.runtimes.onnx_runtime import OnnxRuntime  # noqa: PLC0415

    return OnnxRuntime.from_path(path, intra_op_threads=options.intra_op_threads)


def _skops(path: Path, options: FlavorOptions) -> Runtime:
    # lazy import (pulls scikit-learn and skops)
    from medserve.core.runtimes.skops_runtime import SkopsRuntime  # noqa: PLC0415

    return SkopsRuntime.from_path(path, trust=options.trust_pickle)


def _xgboost(path: Path, options: FlavorOptions) -> Runtime:
    # lazy import (optional extra: xgboost)
    from medserve.core.runtimes.xgboost_runtime import XGBoostRuntime  # noqa: PLC0415

    return XGBoostRuntime.from_path(path, intra_op_threads=options.intra_op_threads)


def _lightgbm(path: Path, options: FlavorOptions) -> Runtime:
    # lazy import (optional extra: lightgbm)
    from medserve.core.runtimes.lightgbm_runtime import LightGBMRuntime  # noqa: PLC0415

    return LightGBMRuntime.from_path(path, intra_op_threads=options.intra_op_threads)


def _pickle(path: Path, options: FlavorOptions) -> Runtime:
    # lazy import (pulls scikit-learn and joblib)
    from medserve.core.runtimes.pickle_runtime import PickleRuntime  # noqa: PLC0415

    return PickleRuntime.from_path(path, trust_pickle=options.trust_pickle)


def _trajectory(path: Path, options: FlavorOptions) -> Runtime:
    # lazy import (onnxruntime only when a trajectory version loads)
    from medserve.core.runtimes.trajectory_runtime import TrajectoryRuntime  # noqa: PLC0415

    return TrajectoryRuntime.from_path(path, intra_op_threads=options.intra_op_threads)


CORE_FLAVORS: dict[str, FlavorLoader] = {
    "onnx": _onnx,
    "trajectory": _trajectory,
    "skops": _skops,
    "xgboost": _xgboost,
    "lightgbm": _lightgbm,
    "pickle": _pickle,
}


def flavors() -> dict[str, FlavorLoader]:
    """Every known flavor: the core's, then each extension's (an extension may not replace one)."""
    known = dict(CORE_FLAVORS)
    for extension in extensions():
        for name, loader in extension.runtime_flavors().items():
            known.setdefault(name, loader)
    return known


def load_runtime(
    flavor: str,
    path: Path,
    *,
    intra_op_threads: int = 1,
    trust_pickle: bool = False,
    artifacts: ArtifactStore | None = None,
) -> Runtime:
    """Load ``path`` (already integrity-checked by the artifact store) into its runtime.

    ``artifacts`` is needed only by ensembles, which load their members from the store (each
    member's sha256 checked as any load is).
    """
    known = flavors()
    loader = known.get(flavor)
    if loader is None:
        raise UnsupportedFormatError(
            f"unknown runtime flavor {flavor!r}; expected one of: {', '.join(known)}"
        )
    return loader(Path(path), FlavorOptions(intra_op_threads, trust_pickle, artifacts))

"""One entry point from a stored artifact to a runtime, by flavor name."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from medserve.errors import UnsupportedFormatError
from medserve.runtimes.base import Runtime

if TYPE_CHECKING:
    from medserve.artifacts import ArtifactStore

FLAVORS: Final = (
    "onnx",
    "skops",
    "xgboost",
    "lightgbm",
    "pickle",
    "image",
    "text",
    "sequence",
    "ensemble",
)


def load_runtime(
    flavor: str,
    path: Path,
    *,
    intra_op_threads: int = 1,
    trust_pickle: bool = False,
    artifacts: ArtifactStore | None = None,
) -> Runtime:
    """Load ``path`` (already integrity-checked by the artifact store) into its runtime.

    Framework imports happen here, lazily, so a server that serves only ONNX never imports
    xgboost or lightgbm. ``artifacts`` is needed only by ensembles, which load their members
    from the store (each member's sha256 checked as any load is).
    """
    path = Path(path)
    if flavor == "onnx":
        from medserve.runtimes.onnx_runtime import OnnxRuntime

        return OnnxRuntime.from_path(path, intra_op_threads=intra_op_threads)
    if flavor == "skops":
        from medserve.runtimes.skops_runtime import SkopsRuntime

        return SkopsRuntime.from_path(path, trust=trust_pickle)
    if flavor == "xgboost":
        from medserve.runtimes.xgboost_runtime import XGBoostRuntime

        return XGBoostRuntime.from_path(path, intra_op_threads=intra_op_threads)
    if flavor == "lightgbm":
        from medserve.runtimes.lightgbm_runtime import LightGBMRuntime

        return LightGBMRuntime.from_path(path, intra_op_threads=intra_op_threads)
    if flavor == "pickle":
        from medserve.runtimes.pickle_runtime import PickleRuntime

        return PickleRuntime.from_path(path, trust_pickle=trust_pickle)
    if flavor == "image":  # bundle: ONNX + declared preprocessing ([imaging] extra)
        from medserve.modalities.image_runtime import ImageRuntime

        return ImageRuntime.from_path(path, intra_op_threads=intra_op_threads)
    if flavor == "text":  # bundle: tokenizer + ONNX encoder + head ([text] extra)
        from medserve.modalities.text_runtime import TextRuntime

        return TextRuntime.from_path(path, intra_op_threads=intra_op_threads)
    if flavor == "sequence":  # bundle: k-mer featuriser + inner ONNX/skops model
        from medserve.modalities.sequence import SequenceRuntime

        return SequenceRuntime.from_path(path, intra_op_threads=intra_op_threads)
    if flavor == "ensemble":  # JSON pinning member versions + a combiner
        from medserve.composition.ensemble import EnsembleRuntime

        return EnsembleRuntime.from_path(
            path, artifacts=artifacts, intra_op_threads=intra_op_threads
        )
    raise UnsupportedFormatError(
        f"unknown runtime flavor {flavor!r}; expected one of: {', '.join(FLAVORS)}"
    )

"""Conversion to ONNX, accepted only when the converted model gives the same answers.

ONNX runs in float32 and re-implements every estimator, so a conversion can be subtly wrong
(a label flipped near a tie, a transformer approximated). We therefore run both on the
registration sample and accept the ONNX model only if labels are identical and probabilities
(or regression values) agree within a tolerance; otherwise the caller serves the original model
with its own runtime and records our reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from medserve.core.runtimes._common import (
    META_CLASS_LABELS,
    META_FEATURE_NAMES,
    META_TASK,
    versions,
)
from medserve.core.runtimes.loader import load_runtime

TARGET_OPSET: Final = {"": 17, "ai.onnx.ml": 3}
BOOSTER_TARGET_OPSET: Final = 15  # the newest onnxmltools' tree converters support
PROBABILITY_TOLERANCE: Final = 1e-5
VALUE_TOLERANCE: Final = 1e-5  # absolute OR relative, per element


@dataclass(frozen=True)
class ConversionResult:
    onnx_bytes: bytes | None
    accepted: bool
    reason: str


def convert_sklearn_to_onnx(
    estimator: Any,
    X_sample: npt.NDArray[Any] | pd.DataFrame,
    *,
    probability_tolerance: float = PROBABILITY_TOLERANCE,
    value_tolerance: float = VALUE_TOLERANCE,
) -> ConversionResult:
    """Convert and verify on ``X_sample`` (columns in the estimator's feature order)."""
    tool = f"skl2onnx {versions('skl2onnx').get('skl2onnx', '?')}"
    name = type(estimator).__name__
    frame, numeric = _as_frame(estimator, X_sample)
    if len(frame) == 0:
        return ConversionResult(None, False, "the sample has no rows, so nothing can be verified")
    try:
        onnx_bytes = _convert_sklearn(estimator, frame, numeric)
    except Exception as exc:
        return ConversionResult(None, False, f"{tool} cannot convert {name}: {_first_line(exc)}")
    matrix = frame.to_numpy(dtype=np.float32) if numeric else frame.to_numpy(dtype=object)
    native_input = frame if hasattr(estimator, "feature_names_in_") else frame.to_numpy()
    try:
        want = _native_outputs(estimator, native_input)
    except Exception as exc:
        return ConversionResult(
            None, False, f"{name} could not predict on the sample: {_first_line(exc)}"
        )
    return _verify(tool, name, onnx_bytes, matrix, want, probability_tolerance, value_tolerance)


def convert_booster_to_onnx(
    flavor: str,
    path: Path,
    X_sample: npt.NDArray[Any],
    *,
    probability_tolerance: float = PROBABILITY_TOLERANCE,
    value_tolerance: float = VALUE_TOLERANCE,
) -> ConversionResult:
    """XGBoost (``flavor="xgboost"``) or LightGBM (``"lightgbm"``) -> ONNX via onnxmltools.

    Verified against medserve's native runtime for the booster, which itself matches the
    library's predictions; on rejection the native runtime is the fallback.
    """

    tool = f"onnxmltools {versions('onnxmltools').get('onnxmltools', '?')}"
    matrix = np.ascontiguousarray(X_sample, dtype=np.float32)
    if matrix.ndim != 2 or len(matrix) == 0:
        return ConversionResult(None, False, "the sample must be a non-empty 2-D numeric matrix")
    native = load_runtime(flavor, Path(path))
    meta = native.metadata()
    try:
        onnx_bytes = _convert_booster(flavor, Path(path), matrix.shape[1], meta.class_labels)
    except Exception as exc:
        return ConversionResult(
            None, False, f"{tool} cannot convert this {flavor} model: {_first_line(exc)}"
        )
    want = native.predict(matrix)
    return _verify(
        tool, f"{flavor} model", onnx_bytes, matrix, want, probability_tolerance, value_tolerance
    )


def compare_outputs(
    want: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    *,
    probability_tolerance: float = PROBABILITY_TOLERANCE,
    value_tolerance: float = VALUE_TOLERANCE,
) -> tuple[bool, str]:
    """Do two runtimes' outputs agree? Returns the verdict and a sentence saying why."""
    if ("label" in want) != ("label" in got):
        return False, "one model is a classifier and the other is not"
    if "label" in want:
        return _compare_classifier(want, got, probability_tolerance)
    return _compare_regressor(want, got, value_tolerance)


# -- internals --------------------------------------------------------------------------------
def _verify(
    tool: str,
    name: str,
    onnx_bytes: bytes,
    matrix: npt.NDArray[Any],
    want: dict[str, np.ndarray],
    probability_tolerance: float,
    value_tolerance: float,
) -> ConversionResult:
    # lazy import (onnxruntime only when an ONNX version loads)
    from medserve.core.runtimes.onnx_runtime import OnnxRuntime  # noqa: PLC0415

    try:
        got = OnnxRuntime(onnx_bytes).predict(matrix)
    except Exception as exc:
        return ConversionResult(
            None, False, f"the {tool} model of {name} failed to run: {_first_line(exc)}"
        )
    ok, detail = compare_outputs(
        want, got, probability_tolerance=probability_tolerance, value_tolerance=value_tolerance
    )
    rows = f"on {len(matrix)} sample rows"
    if ok:
        return ConversionResult(onnx_bytes, True, f"converted with {tool}; {detail} {rows}")
    return ConversionResult(None, False, f"{detail} {rows}")


def _as_frame(
    estimator: Any,
    X: npt.NDArray[Any] | pd.DataFrame,
) -> tuple[pd.DataFrame, bool]:
    names = getattr(estimator, "feature_names_in_", None)
    if isinstance(X, pd.DataFrame):
        frame = X.copy()
    else:
        arr = np.asarray(X)
        columns = [str(n) for n in names] if names is not None else None
        frame = pd.DataFrame(arr, columns=columns)
        if arr.dtype == np.object_:
            frame = frame.infer_objects()
    if names is not None:
        frame = frame[[str(n) for n in names]]
    numeric = all(
        pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t) for t in frame.dtypes
    )
    return frame, numeric


def _convert_sklearn(estimator: Any, frame: pd.DataFrame, numeric: bool) -> bytes:
    # lazy import (heavy: skl2onnx, kept off the serving path)
    from skl2onnx import convert_sklearn  # noqa: PLC0415

    # lazy import (heavy: skl2onnx, kept off the serving path)
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType  # noqa: PLC0415

    initial_types: list[tuple[str, Any]]
    if numeric:
        initial_types = [("X", FloatTensorType([None, frame.shape[1]]))]
    else:  # one named input per column so column transformers can select by name
        initial_types = [
            (
                str(col),
                FloatTensorType([None, 1])
                if pd.api.types.is_numeric_dtype(frame[col].dtype)
                else StringTensorType([None, 1]),
            )
            for col in frame.columns
        ]
    options = {"zipmap": False} if hasattr(estimator, "predict_proba") else None
    model = convert_sklearn(
        estimator, initial_types=initial_types, target_opset=TARGET_OPSET, options=options
    )
    classes = getattr(estimator, "classes_", None)
    is_classifier = classes is not None and hasattr(estimator, "predict_proba")
    labels = (
        [v.item() if isinstance(v, np.generic) else v for v in np.asarray(classes)]
        if is_classifier
        else None
    )
    return _finish(model, labels, [str(c) for c in frame.columns])


def _convert_booster(
    flavor: str, path: Path, n_features: int, class_labels: list[Any] | None
) -> bytes:
    # lazy import (heavy: onnxmltools, kept off the serving path)
    from onnxmltools import convert_lightgbm, convert_xgboost  # noqa: PLC0415

    # lazy import (heavy: onnxmltools, kept off the serving path)
    from onnxmltools.convert.common.data_types import FloatTensorType  # noqa: PLC0415

    initial_types = [("X", FloatTensorType([None, n_features]))]
    if flavor == "xgboost":
        import xgboost as xgb  # noqa: PLC0415 (optional extra: xgboost)

        booster = xgb.Booster()
        booster.load_model(bytearray(path.read_bytes()))
        model = convert_xgboost(
            booster, initial_types=initial_types, target_opset=BOOSTER_TARGET_OPSET
        )
    elif flavor == "lightgbm":
        import lightgbm as lgb  # noqa: PLC0415 (optional extra: lightgbm)

        lgb_booster = lgb.Booster(model_str=path.read_text(encoding="utf-8"))
        model = convert_lightgbm(
            lgb_booster,
            initial_types=initial_types,
            target_opset=BOOSTER_TARGET_OPSET,
            zipmap=False,
        )
    else:
        raise ValueError(f"no booster converter for flavor {flavor!r}")
    return _finish(model, class_labels, [f"f{i}" for i in range(n_features)])


def _finish(model: Any, class_labels: list[Any] | None, feature_names: list[str]) -> bytes:
    """Check the outputs, free the batch dimension, and record what serving needs to know."""
    names = [o.name for o in model.graph.output]
    if not ({"label", "probabilities"} <= set(names) or len(names) == 1):
        raise ValueError(f"unexpected ONNX outputs {names}")
    for output in model.graph.output:  # some converters declare a fixed batch size of 1
        dims = output.type.tensor_type.shape.dim
        if len(dims) > 0:
            dims[0].Clear()
            dims[0].dim_param = "N"
    props = {
        META_TASK: "classification" if class_labels is not None else "regression",
        META_FEATURE_NAMES: json.dumps(feature_names),
    }
    if class_labels is not None:
        props[META_CLASS_LABELS] = json.dumps(class_labels)
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return bytes(model.SerializeToString())


def _native_outputs(estimator: Any, native_input: Any) -> dict[str, np.ndarray]:
    if getattr(estimator, "classes_", None) is not None and hasattr(estimator, "predict_proba"):
        return {
            "label": np.asarray(estimator.predict(native_input)).reshape(-1),
            "probabilities": np.asarray(estimator.predict_proba(native_input), dtype=np.float64),
        }
    return {"value": np.asarray(estimator.predict(native_input), dtype=np.float64).reshape(-1)}


def _compare_classifier(
    want: dict[str, np.ndarray], got: dict[str, np.ndarray], tol: float
) -> tuple[bool, str]:
    want_labels, got_labels = want["label"], got["label"]
    want_probs = want["probabilities"].astype(np.float64)
    if want_labels.dtype.kind in {"U", "S", "O"} or got_labels.dtype.kind in {"U", "S", "O"}:
        flips = int(np.sum(want_labels.astype(str) != got_labels.astype(str)))
    else:
        flips = int(np.sum(want_labels != got_labels))
    if got["probabilities"].shape != want_probs.shape:
        return False, (
            f"probability shapes differ: ONNX {got['probabilities'].shape} "
            f"vs native {want_probs.shape}"
        )
    delta = float(np.max(np.abs(got["probabilities"].astype(np.float64) - want_probs)))
    if flips:
        return False, f"labels differ on {flips} rows (max |Δp| = {delta:.1e})"
    if not delta <= tol:
        return False, f"probabilities differ by {delta:.1e} > {tol:.0e}"
    return True, f"labels equal and max |Δp| = {delta:.1e} (tolerance {tol:.0e})"


def _compare_regressor(
    want: dict[str, np.ndarray], got: dict[str, np.ndarray], tol: float
) -> tuple[bool, str]:
    expected = want["value"].astype(np.float64)
    values = got["value"].astype(np.float64)
    if values.shape != expected.shape:
        return False, f"value shapes differ: ONNX {values.shape} vs native {expected.shape}"
    abs_err = np.abs(values - expected)
    rel_err = abs_err / np.maximum(np.abs(expected), np.finfo(np.float64).tiny)
    max_abs, max_rel = float(abs_err.max()), float(rel_err.max())
    within = (abs_err <= tol) | (rel_err <= tol)
    detail = f"max |Δ| = {max_abs:.1e}, max relative Δ = {max_rel:.1e}"
    if not bool(within.all()):
        bad = int((~within).sum())
        return False, (
            f"values differ on {bad} rows beyond {tol:.0e} absolute and relative ({detail})"
        )
    if max_abs <= tol:
        return True, f"values within {tol:.0e} absolute ({detail})"
    if max_rel <= tol:
        return True, f"values within {tol:.0e} relative ({detail})"
    return True, f"each value within {tol:.0e} absolute or relative ({detail})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]

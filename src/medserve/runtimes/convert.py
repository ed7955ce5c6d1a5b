"""scikit-learn -> ONNX, accepted only when the converted model gives the same answers.

ONNX runs in float32 and re-implements every estimator, so a conversion can be subtly wrong
(a label flipped near a tie, a transformer approximated). We therefore run both on the
registration sample and accept the ONNX model only if labels are identical and probabilities
(or regression values) agree within a tolerance; otherwise the caller serves the estimator
itself and records our reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from medserve.runtimes._common import META_CLASS_LABELS, META_FEATURE_NAMES, META_TASK, versions

TARGET_OPSET: Final = {"": 17, "ai.onnx.ml": 3}
PROBABILITY_TOLERANCE: Final = 1e-5
VALUE_TOLERANCE: Final = 1e-5  # absolute OR relative, per element


@dataclass(frozen=True)
class ConversionResult:
    onnx_bytes: bytes | None
    accepted: bool
    reason: str


def convert_sklearn_to_onnx(
    estimator: Any,
    X_sample: npt.NDArray[Any] | pd.DataFrame,  # noqa: N803
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
        onnx_bytes = _convert(estimator, frame, numeric)
    except Exception as exc:
        return ConversionResult(None, False, f"{tool} cannot convert {name}: {_first_line(exc)}")

    from medserve.runtimes.onnx_runtime import OnnxRuntime

    try:
        runtime = OnnxRuntime(onnx_bytes)
        matrix = frame.to_numpy(dtype=np.float32) if numeric else frame.to_numpy(dtype=object)
        got = runtime.predict(matrix)
        native = frame if hasattr(estimator, "feature_names_in_") else frame.to_numpy()
        if "label" in got:
            ok, detail = _compare_classifier(estimator, native, got, probability_tolerance)
        else:
            ok, detail = _compare_regressor(estimator, native, got, value_tolerance)
    except Exception as exc:
        return ConversionResult(
            None, False, f"the {tool} model of {name} failed verification: {_first_line(exc)}"
        )
    rows = f"on {len(frame)} sample rows"
    if ok:
        return ConversionResult(onnx_bytes, True, f"converted with {tool}; {detail} {rows}")
    return ConversionResult(None, False, f"{detail} {rows}")


def _as_frame(estimator: Any, X: npt.NDArray[Any] | pd.DataFrame) -> tuple[pd.DataFrame, bool]:  # noqa: N803
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


def _convert(estimator: Any, frame: pd.DataFrame, numeric: bool) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

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
        estimator,
        initial_types=initial_types,
        target_opset=TARGET_OPSET,
        options=options,
    )
    _rename_outputs(model)
    classes = getattr(estimator, "classes_", None)
    is_classifier = classes is not None and hasattr(estimator, "predict_proba")
    props = {
        META_TASK: "classification" if is_classifier else "regression",
        META_FEATURE_NAMES: json.dumps([str(c) for c in frame.columns]),
    }
    if is_classifier:
        props[META_CLASS_LABELS] = json.dumps(
            [v.item() if isinstance(v, np.generic) else v for v in np.asarray(classes)]
        )
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return bytes(model.SerializeToString())


def _rename_outputs(model: Any) -> None:
    """skl2onnx names outputs label/probabilities/variable already; nothing else to do."""
    names = [o.name for o in model.graph.output]
    if not ({"label", "probabilities"} <= set(names) or "variable" in names):
        raise ValueError(f"unexpected ONNX outputs {names}")


def _compare_classifier(
    estimator: Any,
    native_input: Any,
    got: dict[str, np.ndarray],
    tol: float,
) -> tuple[bool, str]:
    want_labels = np.asarray(estimator.predict(native_input)).reshape(-1)
    want_probs = np.asarray(estimator.predict_proba(native_input), dtype=np.float64)
    got_labels = got["label"]
    if want_labels.dtype.kind in {"U", "S", "O"} or got_labels.dtype.kind in {"U", "S", "O"}:
        flips = int(np.sum(want_labels.astype(str) != got_labels.astype(str)))
    else:
        flips = int(np.sum(want_labels != got_labels))
    if got["probabilities"].shape != want_probs.shape:
        return False, (
            f"probability shapes differ: ONNX {got['probabilities'].shape} "
            f"vs scikit-learn {want_probs.shape}"
        )
    delta = float(np.max(np.abs(got["probabilities"].astype(np.float64) - want_probs)))
    if flips:
        return False, f"labels differ on {flips} rows (max |Δp| = {delta:.1e})"
    if not delta <= tol:
        return False, f"probabilities differ by {delta:.1e} > {tol:.0e}"
    return True, f"labels equal and max |Δp| = {delta:.1e} (tolerance {tol:.0e})"


def _compare_regressor(
    estimator: Any,
    native_input: Any,
    got: dict[str, np.ndarray],
    tol: float,
) -> tuple[bool, str]:
    want = np.asarray(estimator.predict(native_input), dtype=np.float64).reshape(-1)
    values = got["value"].astype(np.float64)
    if values.shape != want.shape:
        return False, f"value shapes differ: ONNX {values.shape} vs scikit-learn {want.shape}"
    abs_err = np.abs(values - want)
    rel_err = abs_err / np.maximum(np.abs(want), np.finfo(np.float64).tiny)
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

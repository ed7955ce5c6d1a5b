"""Reference distributions, computed once at registration from the registration sample.

Only summaries are kept (per-feature quantiles, PSI bin proportions, category frequencies, range,
missing rate, and the same for the model's own predictions on the sample), never rows: the
reference may be read by anyone allowed to see monitoring, and must not hold patient data.

Numbers are summarized in float32, the precision the model gets them in and the log keeps them
in, so that a window compares with its reference value for value (edges included). A feature
with few distinct values also keeps them with their proportions (``levels``), which makes its
KS test exact. The missing rate is what arrived missing, before the validator imputed it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from medserve.core.extensions import emit
from medserve.core.loaded_model import load_version
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.events import ReferenceProfiled, RegistryEvent, VersionRegistered
from medserve.core.registry.signature import Signature, imputed_counts
from medserve.core.store.monitoring import MonitoringStore

if TYPE_CHECKING:
    import pandas as pd

    from medserve.core.registry.service import Registry

log = logging.getLogger(__name__)

N_QUANTILES = 101
PSI_BINS = 10
MAX_CLASSES = 10
MAX_LEVELS = 32  # distinct values kept exactly (with proportions) for a discrete feature
IMPORTANCE_ROWS = 200


def _as_float(values: np.ndarray) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = np.nan if v is None else float(v)
        except (TypeError, ValueError):
            out[i] = np.nan
    return out


def _f32(values: np.ndarray) -> np.ndarray:
    """Float32-rounded values, held as float64 (exactly representable: JSON keeps them)."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def psi_edges(finite: np.ndarray) -> list[float]:
    """Interior bin edges at the deciles, float32-rounded (duplicates removed for discrete
    features)."""
    qs = _f32(np.quantile(finite, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
    return [float(v) for v in np.unique(qs)]


def bin_proportions(finite: np.ndarray, edges: list[float]) -> list[float]:
    idx = np.searchsorted(np.asarray(edges), finite, side="right")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    return [float(c) for c in counts / max(1, len(finite))]


def summarize_numeric(values: np.ndarray, imputed: int = 0) -> dict[str, Any]:
    """``imputed``: values that arrived missing and were imputed into ``values``."""
    x = values.astype(np.float64) if values.dtype != object else _as_float(values)
    x = _f32(x)
    finite = x[np.isfinite(x)]
    n = len(x)
    summary: dict[str, Any] = {
        "kind": "numeric",
        "n": int(n),
        "missing_rate": float((n - len(finite) + imputed) / n) if n else 0.0,
    }
    if len(finite) == 0:
        return summary
    edges = psi_edges(finite)
    summary.update(
        min=float(finite.min()),
        max=float(finite.max()),
        mean=float(finite.mean()),
        std=float(finite.std()),
        quantiles=[float(v) for v in np.quantile(finite, np.linspace(0, 1, N_QUANTILES))],
        edges=edges,
        proportions=bin_proportions(finite, edges),
    )
    levels, counts = np.unique(finite, return_counts=True)
    if len(levels) <= MAX_LEVELS:
        summary["levels"] = [
            [float(v), float(c / len(finite))] for v, c in zip(levels, counts, strict=True)
        ]
    return summary


def summarize_categorical(values: np.ndarray, imputed: int = 0) -> dict[str, Any]:
    present = [str(v) for v in values if v is not None and not (isinstance(v, float) and v != v)]
    n = len(values)
    levels, counts = np.unique(np.asarray(present, dtype=object), return_counts=True)
    total = max(1, len(present))
    return {
        "kind": "categorical",
        "n": int(n),
        "missing_rate": float((n - len(present) + imputed) / n) if n else 0.0,
        "frequencies": {str(k): float(c / total) for k, c in zip(levels, counts, strict=True)},
    }


def score_columns(
    outputs: dict[str, np.ndarray], class_keys: list[str] | None
) -> dict[str, np.ndarray]:
    """The prediction distributions monitored: each class probability, or the value."""
    if class_keys is not None and "probabilities" in outputs:
        probs = np.asarray(outputs["probabilities"], dtype=np.float64)
        return {f"p:{k}": probs[:, i] for i, k in enumerate(class_keys[:MAX_CLASSES])}
    if "value" in outputs:
        return {"value": np.asarray(outputs["value"], dtype=np.float64).reshape(-1)}
    return {}


def build_reference(
    signature: Signature,
    X: np.ndarray,
    outputs: dict[str, np.ndarray] | None,
    class_keys: list[str] | None,
    missing: np.ndarray | None = None,
) -> dict[str, Any]:
    """``missing``: per feature, the sample's values imputed into ``X`` (``imputed_counts``)."""
    features: dict[str, Any] = {}
    for j, spec in enumerate(signature.inputs):
        if spec.identifier:
            continue  # identifiers are not a distribution to monitor
        if spec.type == "string" and not spec.categories:
            continue  # free text: its values are never kept (a note may name anyone)
        column = X[:, j]
        imputed = int(missing[j]) if missing is not None else 0
        if spec.type == "string":
            features[spec.name] = summarize_categorical(column, imputed)
        else:
            features[spec.name] = summarize_numeric(column, imputed)
    predictions = {
        key: summarize_numeric(values)
        for key, values in (score_columns(outputs, class_keys) if outputs else {}).items()
    }
    return {"n": int(X.shape[0]), "features": features, "predictions": predictions}


def on_version_registered(event: RegistryEvent) -> None:
    """Registry handler: store the drift reference of a version registered with a sample, then
    emit ``ReferenceProfiled`` for what builds on it (global importance, by explain).

    A failure here must not undo a registration that succeeded, so it is logged and the version
    simply has no reference (drift then reports that it cannot compare).
    """
    if not isinstance(event, VersionRegistered) or event.sample is None:
        return
    version = event.version
    try:
        profiled = _record(event.registry, version, event.sample)
    except Exception as exc:  # never fail the registration; say why monitoring lacks a reference
        log.warning(
            "no monitoring reference for %s v%s: %s",
            version.model_name,
            version.version,
            type(exc).__name__,
        )
        return
    emit(profiled)


def _record(registry: Registry, version: ModelVersion, sample: pd.DataFrame) -> ReferenceProfiled:
    loaded = load_version(registry.artifacts, version)
    signature = loaded.signature
    records = sample[signature.feature_names].to_dict(orient="records")
    X = signature.validator().records_to_matrix(records)
    outputs = loaded.predict(X)
    reference = build_reference(signature, X, outputs, loaded.class_keys, imputed_counts(X))
    MonitoringStore(registry.store).put_reference(
        version.model_name, version.version, reference, None, datetime.now(UTC)
    )
    rng = np.random.default_rng(0)
    rows = X if len(X) <= IMPORTANCE_ROWS else X[rng.choice(len(X), IMPORTANCE_ROWS, False)]
    return ReferenceProfiled(registry, version, loaded, reference, rows)

"""Drift of a window of live inputs and predictions against the registration reference.

Per feature: PSI on the reference's decile bins (categories for categorical features), a
Kolmogorov-Smirnov test for numeric features against the reference's quantile function, a
chi-squared test for categorical ones, the missing-value rate and the out-of-range rate (outside
the range seen at registration). The same PSI/KS is applied to the model's outputs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from medserve.core.monitoring_config import ModelMonitoringConfig
from medserve.features.monitoring.reference import bin_proportions

EPS = 1e-4


def psi(reference: list[float], current: list[float]) -> float:
    """Population stability index; empty bins are floored at 1e-4 so the log stays finite."""
    r = np.maximum(np.asarray(reference, dtype=np.float64), EPS)
    c = np.maximum(np.asarray(current, dtype=np.float64), EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def _reference_cdf(quantiles: list[float], x: np.ndarray) -> np.ndarray:
    """The reference CDF, piecewise linear through its stored quantiles."""
    q = np.asarray(quantiles, dtype=np.float64)
    p = np.linspace(0, 1, len(q))
    # Ties (discrete features) make q non-increasing in places: take the right-most level.
    return np.asarray(np.interp(x, q, p, left=0.0, right=1.0), dtype=np.float64)


def ks_test(quantiles: list[float], n_ref: int, current: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic against the reference quantiles, asymptotic p-value."""
    x = np.sort(current)
    n = len(x)
    if n == 0:
        return 0.0, 1.0
    ecdf_hi = np.arange(1, n + 1) / n
    ecdf_lo = np.arange(0, n) / n
    ref_at_x = _reference_cdf(quantiles, x)
    d = float(max(np.max(np.abs(ecdf_hi - ref_at_x)), np.max(np.abs(ecdf_lo - ref_at_x))))
    n_eff = n * n_ref / (n + n_ref) if n_ref else n
    p = float(stats.kstwo.sf(d, max(1, round(n_eff))))
    return d, min(1.0, max(0.0, p))


def numeric_drift(
    summary: dict[str, Any], values: np.ndarray, cfg: ModelMonitoringConfig
) -> dict[str, Any]:
    n = len(values)
    finite = values[np.isfinite(values)]
    result: dict[str, Any] = {
        "kind": "numeric",
        "n": int(n),
        "missing_rate": float(1 - len(finite) / n) if n else 0.0,
        "reference_missing_rate": summary.get("missing_rate", 0.0),
    }
    if "edges" not in summary or len(finite) == 0:
        return result
    current = bin_proportions(finite, summary["edges"])
    value = psi(summary["proportions"], current)
    d, p = ks_test(summary["quantiles"], int(summary["n"]), finite)
    low, high = summary["min"], summary["max"]
    out_of_range = float(np.mean((finite < low) | (finite > high)))
    result.update(
        psi=value,
        ks_statistic=d,
        ks_pvalue=p,
        out_of_range_rate=out_of_range,
        mean=float(finite.mean()),
        reference_mean=summary["mean"],
        status=_status(value, cfg),
        ks_drift=p < cfg.ks_alpha,
    )
    return result


def categorical_drift(
    summary: dict[str, Any], values: list[Any], cfg: ModelMonitoringConfig
) -> dict[str, Any]:
    n = len(values)
    present = [str(v) for v in values if v is not None]
    result: dict[str, Any] = {
        "kind": "categorical",
        "n": int(n),
        "missing_rate": float(1 - len(present) / n) if n else 0.0,
        "reference_missing_rate": summary.get("missing_rate", 0.0),
    }
    if not present:
        return result
    freqs: dict[str, float] = summary["frequencies"]
    levels = list(freqs)
    counts = np.array([sum(1 for v in present if v == k) for k in levels], dtype=np.float64)
    unseen = len(present) - counts.sum()
    reference = [*freqs.values(), 0.0]
    observed = np.append(counts, unseen)
    current = list(observed / len(present))
    expected = np.maximum(np.asarray(reference), EPS)
    expected = expected / expected.sum() * len(present)
    chi2, p = stats.chisquare(observed, expected)
    value = psi(reference, current)
    result.update(
        psi=value,
        chi2=float(chi2),
        chi2_pvalue=float(p),
        out_of_range_rate=float(unseen / len(present)),
        status=_status(value, cfg),
        chi2_drift=bool(p < cfg.ks_alpha),
    )
    return result


def _status(value: float, cfg: ModelMonitoringConfig) -> str:
    if value >= cfg.psi_alert:
        return "alert"
    if value >= cfg.psi_warn:
        return "warn"
    return "ok"


def _column(inputs: list[list[Any]], j: int) -> list[Any]:
    return [row[j] if j < len(row) else None for row in inputs]


def _floats(values: list[Any]) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if (isinstance(v, int | float) and not isinstance(v, bool)) or isinstance(v, bool):
            out[i] = float(v)
    return out


def window_drift(
    reference: dict[str, Any],
    feature_names: list[str],
    inputs: list[list[Any]],
    scores: dict[str, np.ndarray],
    cfg: ModelMonitoringConfig,
) -> dict[str, Any]:
    """Drift of one window; ``scores`` are the monitored prediction columns (see reference)."""
    features: dict[str, Any] = {}
    for j, name in enumerate(feature_names):
        summary = reference["features"].get(name)
        if summary is None:
            continue
        column = _column(inputs, j)
        if summary["kind"] == "categorical":
            features[name] = categorical_drift(summary, column, cfg)
        else:
            features[name] = numeric_drift(summary, _floats(column), cfg)
    predictions = {
        key: numeric_drift(summary, scores[key], cfg)
        for key, summary in reference.get("predictions", {}).items()
        if key in scores
    }
    psis = [f["psi"] for f in features.values() if "psi" in f]
    summary = {
        "n": len(inputs),
        "psi_max": max(psis) if psis else 0.0,
        "features_alert": sorted(k for k, f in features.items() if f.get("status") == "alert"),
        "features_warn": sorted(k for k, f in features.items() if f.get("status") == "warn"),
        "missing_rate_max": max((f["missing_rate"] for f in features.values()), default=0.0),
        "out_of_range_rate_max": max(
            (f.get("out_of_range_rate", 0.0) for f in features.values()), default=0.0
        ),
        "prediction_psi": max((p.get("psi", 0.0) for p in predictions.values()), default=0.0),
    }
    return {"summary": _finite(summary), "features": features, "predictions": predictions}


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()
    }

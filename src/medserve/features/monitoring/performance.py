"""Live performance on labelled predictions whose outcome horizon has passed (matured).

Every figure carries the number of labelled predictions behind it; a figure that cannot be
computed (one class only, too few rows) is ``None`` with that ``n``, never a guess.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_SUBGROUP_N = 10


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.asarray(np.log(p / (1 - p)), dtype=np.float64)


def calibration_slope(y: np.ndarray, p: np.ndarray) -> float | None:
    """Slope of a logistic regression of the outcome on logit(p) (1 = well calibrated)."""
    if len(np.unique(y)) < 2:
        return None
    x = _logit(p)
    X = np.column_stack([np.ones_like(x), x])
    beta = np.zeros(2)
    for _ in range(50):  # Newton-Raphson; converges in a handful of steps
        mu = 1 / (1 + np.exp(-np.clip(X @ beta, -30, 30)))
        w = mu * (1 - mu)
        hessian = X.T @ (X * w[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, X.T @ (y - mu))
        beta += step
        if np.max(np.abs(step)) < 1e-8:
            break
    if not np.isfinite(beta[1]) or abs(beta[1]) > 20:
        return None  # (quasi-)separated outcomes: the slope is not estimable
    return float(beta[1])


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    n = len(y)
    positives = int(y.sum())
    out: dict[str, Any] = {"n": n, "n_positive": positives}
    if n == 0:
        return out
    predicted = p >= threshold
    tp = int(np.sum(predicted & (y == 1)))
    out["sensitivity"] = tp / positives if positives else None
    out["ppv"] = tp / int(predicted.sum()) if predicted.any() else None
    expected = float(p.sum())
    out["observed_expected"] = positives / expected if expected > 0 else None
    if 0 < positives < n:
        # lazy import (heavy: scikit-learn, kept off the serving path)
        from sklearn.metrics import roc_auc_score  # noqa: PLC0415

        out["auroc"] = float(roc_auc_score(y, p))
        out["calibration_slope"] = calibration_slope(y.astype(np.float64), p)
    else:
        out["auroc"] = None
        out["calibration_slope"] = None
    return out


def regression_metrics(y: np.ndarray, yhat: np.ndarray) -> dict[str, Any]:
    n = len(y)
    if n == 0:
        return {"n": 0}
    err = yhat - y
    return {
        "n": n,
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "bias": float(np.mean(err)),
    }


def performance(
    rows: list[dict[str, Any]], *, task: str, threshold: float, subgroups: list[str]
) -> dict[str, Any]:
    """``rows``: ``{"y": outcome (0/1 or number), "score": float, "groups": {key: value}}``."""

    def metrics(selected: list[dict[str, Any]]) -> dict[str, Any]:
        y = np.array([r["y"] for r in selected], dtype=np.float64)
        s = np.array([r["score"] for r in selected], dtype=np.float64)
        if task == "classification":
            return binary_metrics(y.astype(int), s, threshold)
        return regression_metrics(y, s)

    result: dict[str, Any] = {"overall": metrics(rows), "subgroups": {}}
    for key in subgroups:
        values = sorted(
            {str(r["groups"].get(key)) for r in rows if r["groups"].get(key) is not None}
        )
        groups = {}
        for value in values:
            selected = [r for r in rows if str(r["groups"].get(key)) == value]
            groups[value] = (
                metrics(selected)
                if len(selected) >= MIN_SUBGROUP_N
                else {"n": len(selected), "note": f"fewer than {MIN_SUBGROUP_N} labelled"}
            )
        if groups:
            result["subgroups"][key] = groups
    return result

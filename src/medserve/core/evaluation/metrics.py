"""Point metrics. Pure functions of arrays, so bootstrap and subgroup code can call them freely.

Calibration follows the usual clinical-prediction conventions (Van Calster et al. 2019): the
calibration slope is the coefficient of a logistic regression of the outcome on the model's
logit; calibration-in-the-large (the intercept) is fitted with that logit as an offset.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from sklearn import metrics as skm

EPS = 1e-12
ArrayMetric = Callable[[np.ndarray, np.ndarray], float]


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p.astype(np.float64), 1e-9, 1 - 1e-9)
    return np.asarray(np.log(q / (1 - q)))


def _newton_logistic(X: np.ndarray, y: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Unpenalised logistic regression by Newton-Raphson (a few parameters, always small)."""
    beta = np.zeros(X.shape[1])
    for _ in range(100):
        eta = np.clip(X @ beta + offset, -35, 35)
        p = 1.0 / (1.0 + np.exp(-eta))
        grad = X.T @ (y - p)
        hess = X.T @ (X * (p * (1 - p))[:, None])
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return np.full(X.shape[1], np.nan)
        beta = beta + step
        if float(np.max(np.abs(step))) < 1e-10:
            return beta
    return np.full(X.shape[1], np.nan)  # no convergence: (quasi-)separation, no finite MLE


def _separated(y: np.ndarray, p: np.ndarray) -> bool:
    """Perfect separation: the recalibration fit has no finite slope (undefined, not huge)."""
    return bool(p[y == 1].min() > p[y == 0].max()) if 0 < y.sum() < len(y) else True


def calibration_slope(y: np.ndarray, p: np.ndarray) -> float:
    if _separated(y, p):
        return math.nan
    lp = _logit(p)
    X = np.column_stack([np.ones_like(lp), lp])
    return float(_newton_logistic(X, y.astype(np.float64), np.zeros_like(lp))[1])


def calibration_intercept(y: np.ndarray, p: np.ndarray) -> float:
    """Calibration-in-the-large: 0 when the mean risk is right."""
    lp = _logit(p)
    return float(_newton_logistic(np.ones((len(lp), 1)), y.astype(np.float64), lp)[0])


def oe_ratio(y: np.ndarray, p: np.ndarray) -> float:
    expected = float(np.sum(p))
    return float(np.sum(y)) / expected if expected > 0 else math.nan


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney form (ties count half): equal to scikit-learn's, ~50x cheaper per call,
    which matters inside thousands of bootstrap resamples."""
    from scipy.stats import rankdata  # noqa: PLC0415 (heavy: scipy, kept off the serving path)

    n1 = float(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auprc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision over distinct thresholds, as scikit-learn defines it."""
    if y.sum() == 0:
        return math.nan
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    tps = np.cumsum(ys)
    fps = np.cumsum(1 - ys)
    idx = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]
    tp, fp = tps[idx], fps[idx]
    recall = tp / tp[-1]
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    pred = p >= threshold
    pos = y == 1
    tp = float(np.sum(pred & pos))
    fp = float(np.sum(pred & ~pos))
    fn = float(np.sum(~pred & pos))
    tn = float(np.sum(~pred & ~pos))
    sens = _ratio(tp, tp + fn)
    ppv = _ratio(tp, tp + fp)
    return {
        "sensitivity": sens,
        "specificity": _ratio(tn, tn + fp),
        "ppv": ppv,
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, len(y)),
    }


def net_benefit(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    """Vickers' net benefit of treating those with risk >= threshold."""
    n = len(y)
    pred = p >= threshold
    tp = float(np.sum(pred & (y == 1)))
    fp = float(np.sum(pred & (y == 0)))
    return tp / n - fp / n * threshold / (1 - threshold)


def treat_all_net_benefit(y: np.ndarray, threshold: float) -> float:
    prevalence = float(np.mean(y))
    return prevalence - (1 - prevalence) * threshold / (1 - threshold)


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Every scalar binary metric; ``y`` in {0, 1}, ``p`` the predicted risk of 1."""
    out = {
        "auroc": auroc(y, p),
        "auprc": auprc(y, p),
        "brier": brier(y, p),
        "calibration_intercept": calibration_intercept(y, p) if 0 < y.sum() < len(y) else math.nan,
        "calibration_slope": calibration_slope(y, p) if 0 < y.sum() < len(y) else math.nan,
        "oe_ratio": oe_ratio(y, p),
        "prevalence": float(np.mean(y)),
    }
    out.update(threshold_metrics(y, p, threshold))
    return out


def calibration_curve(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Observed vs predicted by quantile bin of predicted risk (for the calibration plot)."""
    order = np.argsort(p, kind="stable")
    rows = []
    for chunk in np.array_split(order, min(bins, max(1, len(p)))):
        if len(chunk) == 0:
            continue
        rows.append(
            {
                "predicted": float(np.mean(p[chunk])),
                "observed": float(np.mean(y[chunk])),
                "n": len(chunk),
            }
        )
    return rows


def multiclass_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """``y`` as class indices 0..k-1, ``proba`` n x k."""
    k = proba.shape[1]
    onehot = np.eye(k)[y]
    pred = np.argmax(proba, axis=1)
    present = np.unique(y)
    auc = math.nan
    if len(present) == k:
        auc = float(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    return {
        "accuracy": float(np.mean(pred == y)),
        "f1_macro": float(skm.f1_score(y, pred, average="macro", labels=list(range(k)))),
        "auroc_macro_ovr": auc,
        "brier": float(np.mean(np.sum((proba - onehot) ** 2, axis=1))),
    }


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    err = pred - y
    total = float(np.sum((y - y.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(math.sqrt(np.mean(err**2))),
        "r2": 1.0 - float(np.sum(err**2)) / total if total > 0 else math.nan,
        "mean_observed": float(np.mean(y)),
        "mean_predicted": float(np.mean(pred)),
    }

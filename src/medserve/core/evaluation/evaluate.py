"""One evaluation: every metric of the task with percentile-bootstrap 95% CIs, overall and per
subgroup, plus the curves the report draws. The result is plain JSON, stored as is.

Subgroups smaller than ``min_n``, or with fewer than ``min_events`` events (survival) or
outcomes of the rarer class (binary), are listed with their counts and flagged, never given
numbers: a metric on 12 patients or 4 events reads as evidence and is not. A subgroup whose
discrimination cannot be estimated (no comparable pair in most bootstrap resamples) is flagged
as not estimable for the same reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from medserve.core.errors import InvalidRequestError
from medserve.core.evaluation import metrics as m
from medserve.core.evaluation import survival_metrics as sm

Task = Literal["binary", "multiclass", "regression", "survival"]
DEFAULT_DC_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
DEFAULT_MIN_EVENTS = 10
# The discrimination metric whose absence makes a subgroup "not estimable".
_DISCRIMINATION = {"binary": "auroc", "survival": "concordance"}


@dataclass(frozen=True)
class Predictions:
    """What a model said about a labelled data set.

    ``y``: binary 0/1 (1 = ``positive_label``), multiclass class index, regression value,
    survival time. ``score``: binary risk of 1, multiclass n x k probabilities, regression
    prediction, survival risk score (higher = earlier event). ``survival_at``: horizon -> S(h|x).
    """

    task: Task
    y: np.ndarray
    score: np.ndarray
    event: np.ndarray | None = None
    survival_at: dict[float, np.ndarray] = field(default_factory=dict)
    class_names: list[str] | None = None
    positive_label: str | None = None

    def take(self, idx: np.ndarray) -> Predictions:
        return replace(
            self,
            y=self.y[idx],
            score=self.score[idx],
            event=None if self.event is None else self.event[idx],
            survival_at={h: s[idx] for h, s in self.survival_at.items()},
        )

    def __len__(self) -> int:
        return len(self.y)


def scalar_metrics(pred: Predictions, threshold: float) -> dict[str, float]:
    if pred.task == "binary":
        return m.binary_metrics(pred.y, pred.score, threshold)
    if pred.task == "multiclass":
        return m.multiclass_metrics(pred.y.astype(int), pred.score)
    if pred.task == "regression":
        return m.regression_metrics(pred.y, pred.score)
    assert pred.event is not None
    out = {"concordance": sm.concordance(pred.y, pred.event, pred.score)}
    for horizon, surv in pred.survival_at.items():
        out[f"brier_at_{horizon:g}"] = sm.brier_at(pred.y, pred.event, surv, horizon)
        out[f"auc_at_{horizon:g}"] = sm.auc_at(pred.y, pred.event, pred.score, horizon)
        out[f"oe_at_{horizon:g}"] = sm.oe_at(pred.y, pred.event, surv, horizon)
    out["event_rate"] = float(np.mean(pred.event))
    return out


def bootstrap(
    pred: Predictions, threshold: float, n_boot: int, seed: int
) -> dict[str, dict[str, float | None]]:
    """Point estimates with percentile 95% CIs (resamples where a metric is undefined skipped)."""
    point = scalar_metrics(pred, threshold)
    rng = np.random.default_rng(seed)
    n = len(pred)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        for key, value in scalar_metrics(pred.take(idx), threshold).items():
            if key in draws and math.isfinite(value):
                draws[key].append(value)
    out: dict[str, dict[str, float | None]] = {}
    for key, value in point.items():
        values = draws[key]
        enough = len(values) >= max(10, n_boot // 2)
        out[key] = {
            "value": _clean(value),
            "ci_low": _clean(float(np.percentile(values, 2.5))) if enough else None,
            "ci_high": _clean(float(np.percentile(values, 97.5))) if enough else None,
        }
    return out


def evaluate(
    pred: Predictions,
    *,
    threshold: float = 0.5,
    threshold_method: str = "fixed at 0.5",
    subgroups: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
    min_n: int = 30,
    n_boot: int = 500,
    seed: int = 0,
    decision_thresholds: Sequence[float] = DEFAULT_DC_THRESHOLDS,
    synthetic_subgroups: Sequence[str] = (),
    min_events: int = DEFAULT_MIN_EVENTS,
) -> dict[str, Any]:
    """Evaluate ``pred`` overall and within each level of each subgroup column."""
    if len(pred) == 0:
        raise InvalidRequestError("cannot evaluate on an empty data set")
    result: dict[str, Any] = {
        "task": pred.task,
        "n": len(pred),
        "metrics": bootstrap(pred, threshold, n_boot, seed),
        "bootstrap": {"resamples": n_boot, "seed": seed, "method": "percentile, 95%"},
        "min_n": min_n,
        "min_events": min_events,
    }
    if pred.task == "binary":
        result["positive_label"] = pred.positive_label
        result["n_positive"] = int(pred.y.sum())
        result["threshold"] = {"value": threshold, "method": threshold_method}
        result["calibration_curve"] = m.calibration_curve(pred.y, pred.score)
        result["decision_curve"] = [
            {
                "threshold": t,
                "model": m.net_benefit(pred.y, pred.score, t),
                "treat_all": m.treat_all_net_benefit(pred.y, t),
                "treat_none": 0.0,
            }
            for t in decision_thresholds
        ]
        result["curves"] = _binary_curves(pred.y, pred.score)
    if pred.task == "multiclass":
        result["classes"] = pred.class_names
    if pred.task == "survival":
        assert pred.event is not None
        result["n_events"] = int(pred.event.sum())
        result["horizons"] = sorted(pred.survival_at)
        groups = 10 if result["n_events"] >= 100 else 5
        result["survival_calibration"] = {
            "groups": f"{groups} quantile groups of predicted risk",
            "observed": "Kaplan-Meier risk within each group",
            "by_horizon": {
                f"{h:g}": sm.calibration_at(pred.y, pred.event, s, h, groups)
                for h, s in sorted(pred.survival_at.items())
            },
        }
    if pred.task == "regression":
        result["residuals"] = _residual_sample(pred.y, pred.score)
    result["subgroups"] = {
        column: _subgroup(pred, np.asarray(values), threshold, min_n, min_events, n_boot, seed)
        for column, values in (subgroups or {}).items()
    }
    result["synthetic_subgroups"] = list(synthetic_subgroups)
    return result


def _events(pred: Predictions) -> tuple[int, str] | None:
    """(events, what they are) for the min_events rule; None where it does not apply."""
    if pred.task == "survival" and pred.event is not None:
        return int(pred.event.sum()), "events"
    if pred.task == "binary":
        positives = int(pred.y.sum())
        return min(positives, len(pred) - positives), "outcomes of the rarer class"
    return None


def _subgroup(
    pred: Predictions,
    values: np.ndarray,
    threshold: float,
    min_n: int,
    min_events: int,
    n_boot: int,
    seed: int,
) -> list[dict[str, Any]]:
    if len(values) != len(pred):
        raise InvalidRequestError("a subgroup column must have one value per evaluated row")
    rows = []
    text = np.array([str(v) for v in values])
    for level in sorted(set(text.tolist())):
        idx = np.flatnonzero(text == level)
        part = pred.take(idx)
        entry: dict[str, Any] = {"level": level, "n": len(idx)}
        events = _events(part)
        if events is not None:
            entry["n_events"] = events[0]
        if len(idx) < min_n:
            _flag(entry, "below_min_n", f"n={len(idx)} is below the minimum of {min_n}")
        elif events is not None and events[0] < min_events:
            _flag(
                entry,
                "below_min_events",
                f"{events[0]} {events[1]} is below the minimum of {min_events} events",
            )
        else:
            metrics = bootstrap(part, threshold, n_boot, seed)
            key = _DISCRIMINATION.get(pred.task)
            found = metrics.get(key, {}) if key else {}
            # Too few resamples with a comparable pair: the CI (and so the number) means nothing.
            unusable = key is not None and (
                found.get("value") is None or (n_boot >= 10 and found.get("ci_low") is None)
            )
            if unusable:
                _flag(
                    entry,
                    "not_estimable",
                    f"{key} is not estimable: most bootstrap resamples have no comparable pair",
                )
            else:
                entry.update(flagged=False, status="reported", metrics=metrics)
        rows.append(entry)
    return rows


def _flag(entry: dict[str, Any], status: str, why: str) -> None:
    entry.update(flagged=True, status=status, reason=f"{why}: not reported")


def _binary_curves(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    # lazy import (heavy: scikit-learn, kept off the serving path)
    from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: PLC0415

    if not 0 < y.sum() < len(y):
        return {}
    fpr, tpr, _ = roc_curve(y, p)
    precision, recall, _ = precision_recall_curve(y, p)
    return {
        "roc": {"fpr": _thin(fpr), "tpr": _thin(tpr)},
        "pr": {"recall": _thin(recall), "precision": _thin(precision)},
    }


def _thin(values: np.ndarray, most: int = 200) -> list[float]:
    if len(values) > most:
        values = values[np.linspace(0, len(values) - 1, most).astype(int)]
    return [round(float(v), 6) for v in values]


def _residual_sample(y: np.ndarray, pred: np.ndarray, most: int = 500) -> dict[str, list[float]]:
    idx = np.arange(len(y))[:most]
    return {"observed": _thin(y[idx], most), "predicted": _thin(pred[idx], most)}


def _clean(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def metric_value(result: Mapping[str, Any], metric: str, statistic: str = "value") -> float | None:
    """A number from a stored result's overall metrics (``statistic``: value, ci_low, ci_high)."""
    entry = result.get("metrics", {}).get(metric)
    return None if entry is None else entry.get(statistic)

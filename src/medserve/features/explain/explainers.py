"""Per-feature attributions whose sum plus a base value equals the model's output.

Three methods, chosen by what the model is:

- ``linear_exact``: a linear model (optionally after a StandardScaler). Attribution of feature j
  is ``w_j * (z_j - mean z_j)`` in the model's own output space (log-odds for a logistic model);
  base + sum is the output exactly.
- ``tree_shap``: tree ensembles, through SHAP's TreeExplainer (path-dependent, exact; needs the
  ``[explain]`` extra).
- ``permutation_shapley``: anything else, on the served runtime. Baseline Shapley values by
  antithetic permutations over a synthetic background made of per-feature quantiles of the
  registration sample (no patient row is ever stored); each permutation telescopes, so base + sum
  equals the output exactly whatever the number of permutations.

For a classifier the explained output is one class (the positive class): the probability, or its
log-odds for linear models, where ``points`` rescales the log-odds attributions to probability
points that sum exactly to ``p(x) - p(base)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

PERMUTATIONS = 8  # 4 antithetic pairs
BACKGROUND_QUANTILES = (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95)


@dataclass(frozen=True)
class Explanation:
    method: str
    output: str  # "probability" | "log_odds" | "value"
    target: str | None  # the explained class
    base: np.ndarray  # (n,)
    attributions: np.ndarray  # (n, features)
    prediction: np.ndarray  # (n,) base + attributions.sum(1)
    points: np.ndarray | None = None  # (n, features) in probability units, log-odds models only


class Explainer(Protocol):
    method: str

    def explain(self, X: np.ndarray) -> Explanation: ...


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-x)), dtype=np.float64)


def _probability_points(base: np.ndarray, attributions: np.ndarray) -> np.ndarray:
    total = attributions.sum(axis=1)
    delta = _sigmoid(base + total) - _sigmoid(base)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(np.abs(total) > 1e-12, delta / total, 0.0)
    return attributions * scale[:, None]


# ------------------------------------------------------------------------------------------
# Linear
# ------------------------------------------------------------------------------------------


def linear_parts(estimator: Any) -> tuple[Any, Any] | None:
    """``(scaler or None, linear model)`` when the estimator is (scaled) linear, else None."""
    # lazy import (heavy: scikit-learn, kept off the serving path)
    from sklearn.pipeline import Pipeline  # noqa: PLC0415

    # lazy import (heavy: scikit-learn, kept off the serving path)
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    scaler = None
    model = estimator
    if isinstance(estimator, Pipeline):
        steps = [s for _, s in estimator.steps if s not in (None, "passthrough")]
        if len(steps) == 2 and isinstance(steps[0], StandardScaler):
            scaler, model = steps
        elif len(steps) == 1:
            model = steps[0]
        else:
            return None
    coef = getattr(model, "coef_", None)
    if coef is None or not hasattr(model, "intercept_"):
        return None
    coef = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    if coef.shape[0] != 1:  # multinomial: not a single linear score
        return None
    return scaler, model


class LinearExplainer:
    method = "linear_exact"

    def __init__(self, estimator: Any, mean: np.ndarray, target: str | None) -> None:
        parts = linear_parts(estimator)
        if parts is None:
            raise ValueError("not a linear model")
        scaler, model = parts
        self.scaler = scaler
        self.weights = np.atleast_2d(np.asarray(model.coef_, dtype=np.float64))[0]
        self.intercept = float(np.ravel(model.intercept_)[0])
        self.is_classifier = hasattr(model, "classes_")
        self.target = target
        self.sign = 1.0
        if self.is_classifier:
            classes = [str(c) for c in model.classes_]
            if target is not None and target == classes[0]:
                self.sign = -1.0  # log-odds of class 0 = -(log-odds of class 1)
            self.target = target or classes[1]
        self.mean_z = self._z(mean[None, :])[0]

    def _z(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if self.scaler is None:
            return X
        scale = np.asarray(self.scaler.scale_ if self.scaler.with_std else 1.0, dtype=np.float64)
        center = np.asarray(self.scaler.mean_ if self.scaler.with_mean else 0.0, dtype=np.float64)
        return (X - center) / scale

    def explain(self, X: np.ndarray) -> Explanation:
        z = self._z(X)
        attributions = self.sign * self.weights * (z - self.mean_z)
        base_value = self.sign * (self.intercept + float(self.weights @ self.mean_z))
        base = np.full(len(z), base_value)
        prediction = base + attributions.sum(axis=1)
        if self.is_classifier:
            points = _probability_points(base, attributions)
            return Explanation(
                self.method, "log_odds", self.target, base, attributions, prediction, points
            )
        return Explanation(self.method, "value", None, base, attributions, prediction)


# ------------------------------------------------------------------------------------------
# Trees
# ------------------------------------------------------------------------------------------

TREE_TYPES = (
    "RandomForestClassifier",
    "RandomForestRegressor",
    "ExtraTreesClassifier",
    "ExtraTreesRegressor",
    "DecisionTreeClassifier",
    "DecisionTreeRegressor",
    "GradientBoostingClassifier",
    "GradientBoostingRegressor",
)


def is_tree_model(estimator: Any) -> bool:
    return type(estimator).__name__ in TREE_TYPES


class TreeShapExplainer:
    method = "tree_shap"

    def __init__(self, estimator: Any, target: str | None) -> None:
        with warnings.catch_warnings():
            # shap imports matplotlib, whose colormap set-up warns about its own API.
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            import shap  # noqa: PLC0415 (heavy: shap, kept off the serving path)

        self.estimator = estimator
        self.explainer = shap.TreeExplainer(estimator)
        classes = [str(c) for c in getattr(estimator, "classes_", [])]
        self.classes = classes
        self.target = (target if target in classes else classes[-1]) if classes else None
        self.class_index = classes.index(self.target) if self.target is not None else 0
        name = type(estimator).__name__
        self.output = (
            "value"
            if not classes
            else ("log_odds" if name.startswith("GradientBoosting") else "probability")
        )

    def explain(self, X: np.ndarray) -> Explanation:
        X = np.asarray(X, dtype=np.float64)
        values = np.asarray(self.explainer.shap_values(X, check_additivity=False))
        expected = np.atleast_1d(np.asarray(self.explainer.expected_value, dtype=np.float64))
        if values.ndim == 3:  # (n, features, classes)
            attributions = values[:, :, self.class_index]
            base_value = float(expected[self.class_index])
        else:  # single output (regression, binary boosting: log-odds of class 1)
            attributions = values
            base_value = float(expected[0])
            if self.output == "log_odds" and self.class_index == 0:
                attributions, base_value = -attributions, -base_value
        base = np.full(len(X), base_value)
        prediction = base + attributions.sum(axis=1)
        points = _probability_points(base, attributions) if self.output == "log_odds" else None
        return Explanation(
            self.method, self.output, self.target, base, attributions, prediction, points
        )


# ------------------------------------------------------------------------------------------
# Model-agnostic
# ------------------------------------------------------------------------------------------


def quantile_background(reference: dict[str, Any], feature_names: list[str]) -> np.ndarray:
    """Synthetic background rows: row k holds the k-th quantile of every feature separately.

    Categorical features take their most frequent category. No row is a real patient.
    """
    columns: list[list[Any]] = []
    positions = np.linspace(0, 1, 101)
    for name in feature_names:
        summary = reference.get("features", {}).get(name, {})
        if summary.get("kind") == "categorical" and summary.get("frequencies"):
            mode = max(summary["frequencies"].items(), key=lambda kv: kv[1])[0]
            columns.append([mode] * len(BACKGROUND_QUANTILES))
        elif summary.get("quantiles"):
            qs = np.interp(BACKGROUND_QUANTILES, positions, summary["quantiles"])
            columns.append([float(v) for v in qs])
        else:
            columns.append([0.0] * len(BACKGROUND_QUANTILES))
    rows = list(zip(*columns, strict=True))
    numeric = all(isinstance(v, float) for row in rows for v in row)
    return np.array(rows, dtype=np.float32 if numeric else object)


class PermutationExplainer:
    method = "permutation_shapley"

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        background: np.ndarray,
        *,
        output: str,
        target: str | None,
        permutations: int = PERMUTATIONS,
        seed: int = 0,
    ) -> None:
        self.predict = predict
        self.background = background
        self.output = output
        self.target = target
        self.permutations = max(2, permutations - permutations % 2)
        self.seed = seed

    def explain(self, X: np.ndarray) -> Explanation:
        n, f = X.shape
        rng = np.random.default_rng(self.seed)
        orders = []
        for _ in range(self.permutations // 2):
            order = rng.permutation(f)
            orders.extend([order, order[::-1]])
        bg = self.background
        k = len(bg)
        attributions = np.zeros((n, f))
        base = np.zeros(n)
        prediction = np.zeros(n)
        for i in range(n):
            # For each (order, background row): f+1 points from the background row to x.
            steps = np.empty((len(orders), k, f + 1, f), dtype=X.dtype)
            for o, order in enumerate(orders):
                current = np.repeat(bg[None, :, :], f + 1, axis=0).transpose(1, 0, 2).copy()
                for step, j in enumerate(order, start=1):
                    current[:, step:, j] = X[i, j]
                steps[o] = current
            values = self.predict(steps.reshape(-1, f)).reshape(len(orders), k, f + 1)
            deltas = np.diff(values, axis=2)  # (orders, k, f): gain of the feature added
            for o, order in enumerate(orders):
                attributions[i, order] += deltas[o].mean(axis=0)
            attributions[i] /= len(orders)
            base[i] = values[:, :, 0].mean()
            prediction[i] = values[:, :, -1].mean()
        return Explanation(self.method, self.output, self.target, base, attributions, prediction)

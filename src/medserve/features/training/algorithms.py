"""Estimators by name, each inside a pipeline with the spec's preprocessing.

Linear models, SVMs and MLPs get standardised inputs; every scikit-learn model gets the
imputation the spec asks for inside its pipeline, so serving applies exactly what training did.
XGBoost and LightGBM take raw features (they handle missing values natively) and are registered
from their own booster files, which the registry converts to ONNX and verifies.
"""

from __future__ import annotations

from typing import Any

from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

BOOSTERS = frozenset({"xgboost", "lightgbm"})
NO_CLASS_WEIGHT = frozenset({"mlp"})


def _model(name: str, task: str, seed: int, balanced: bool) -> Any:
    cw = "balanced" if balanced else None
    classify = task in ("binary", "multiclass")
    if name == "logistic_regression":
        # lazy import (heavy: scikit-learn, kept off the serving path)
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

        return LogisticRegression(max_iter=5000, class_weight=cw, random_state=seed)
    if name == "linear_regression":
        # lazy import (heavy: scikit-learn, kept off the serving path)
        from sklearn.linear_model import Ridge  # noqa: PLC0415

        return Ridge(alpha=1.0)
    if name == "random_forest":
        # lazy import (heavy: scikit-learn, kept off the serving path)
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor  # noqa: PLC0415

        if classify:
            return RandomForestClassifier(
                n_estimators=200, class_weight=cw, random_state=seed, n_jobs=1
            )
        return RandomForestRegressor(n_estimators=200, random_state=seed, n_jobs=1)
    if name == "hist_gradient_boosting":
        # lazy import (heavy: scikit-learn, kept off the serving path)
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor  # noqa: PLC0415

        if classify:
            return HistGradientBoostingClassifier(class_weight=cw, random_state=seed)
        return HistGradientBoostingRegressor(random_state=seed)
    if name == "svm":
        # lazy import (heavy: scikit-learn, kept off the serving path)
        from sklearn.calibration import CalibratedClassifierCV  # noqa: PLC0415

        # lazy import (heavy: scikit-learn, kept off the serving path)
        from sklearn.svm import SVC, SVR  # noqa: PLC0415

        if classify:  # Platt scaling by cross-validation (SVC(probability=True) is deprecated)
            return CalibratedClassifierCV(
                SVC(class_weight=cw, random_state=seed), method="sigmoid", cv=3
            )
        return SVR()
    if name == "mlp":
        # lazy import (heavy: scikit-learn, kept off the serving path)
        from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: PLC0415

        cls = MLPClassifier if classify else MLPRegressor
        return cls(hidden_layer_sizes=(32,), max_iter=2000, early_stopping=True, random_state=seed)
    if name == "xgboost":
        import xgboost as xgb  # noqa: PLC0415 (optional extra: xgboost)

        if classify:
            return xgb.XGBClassifier(n_estimators=200, max_depth=4, random_state=seed, n_jobs=1)
        return xgb.XGBRegressor(n_estimators=200, max_depth=4, random_state=seed, n_jobs=1)
    if name == "lightgbm":
        import lightgbm as lgb  # noqa: PLC0415 (optional extra: lightgbm)

        if classify:
            return lgb.LGBMClassifier(
                n_estimators=200, class_weight=cw, random_state=seed, n_jobs=1, verbose=-1
            )
        return lgb.LGBMRegressor(n_estimators=200, random_state=seed, n_jobs=1, verbose=-1)
    raise ValueError(f"unknown algorithm {name!r}")


def build(
    name: str,
    task: str,
    *,
    numeric: list[str],
    categorical: list[str],
    seed: int,
    balanced: bool,
    impute: bool,
) -> Any:
    model = _model(name, task, seed, balanced)
    if name in BOOSTERS:
        return model
    steps: list[tuple[str, Any]] = []
    if categorical:
        num_steps: list[tuple[str, Any]] = []
        if impute:
            num_steps.append(("impute", SimpleImputer(strategy="median")))
        num_steps.append(("scale", StandardScaler()))
        cat_steps: list[tuple[str, Any]] = []
        if impute:
            cat_steps.append(("impute", SimpleImputer(strategy="most_frequent")))
        cat_steps.append(("onehot", OneHotEncoder(handle_unknown="ignore")))
        steps.append(
            (
                "prepare",
                ColumnTransformer(
                    [
                        ("num", Pipeline(num_steps), numeric),
                        ("cat", Pipeline(cat_steps), categorical),
                    ]
                ),
            )
        )
    else:
        if impute:
            steps.append(("impute", SimpleImputer(strategy="median")))
        steps.append(("scale", StandardScaler()))
    steps.append(("model", model))
    return Pipeline(steps)


def class_weight_note(name: str, balanced: bool) -> str:
    if not balanced:
        return "none (classes weighted equally)"
    if name in NO_CLASS_WEIGHT:
        return "requested 'balanced' but the MLP does not support class weights: none applied"
    if name == "xgboost":
        return "balanced via per-row sample weights (n / (k * n_class))"
    return "balanced (weights inversely proportional to class frequency)"

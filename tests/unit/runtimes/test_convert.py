"""sklearn -> ONNX conversion is accepted only when it provably agrees with scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from medserve.core.runtimes.convert import convert_sklearn_to_onnx
from medserve.core.runtimes.onnx_runtime import OnnxRuntime

Data = tuple[pd.DataFrame, pd.Series]


@pytest.mark.parametrize(
    "estimator",
    [
        LogisticRegression(max_iter=5000),
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        RandomForestClassifier(n_estimators=100, random_state=0),
    ],
    ids=["logreg", "scaled-logreg", "random-forest"],
)
def test_classifiers_convert_and_agree(estimator: object, cancer: Data) -> None:
    features, y = cancer
    estimator.fit(features, y)  # type: ignore[attr-defined]
    result = convert_sklearn_to_onnx(estimator, features)
    assert result.accepted, result.reason
    assert result.onnx_bytes is not None
    assert "labels equal" in result.reason
    assert "569 sample rows" in result.reason
    assert result.reason.startswith("converted with skl2onnx")
    runtime = OnnxRuntime(result.onnx_bytes)
    out = runtime.predict(features.to_numpy(np.float32))
    np.testing.assert_array_equal(out["label"], estimator.predict(features))  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        out["probabilities"],
        estimator.predict_proba(features),
        atol=1e-5,  # type: ignore[attr-defined]
    )
    assert runtime.metadata().class_labels == [0, 1]


def test_conversion_accepts_the_float32_matrix_the_registry_passes(cancer: Data) -> None:
    features, y = cancer
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, y)
    result = convert_sklearn_to_onnx(model, features.to_numpy(np.float32))
    assert result.accepted, result.reason


@pytest.mark.parametrize(
    "estimator",
    [LinearRegression(), RandomForestRegressor(n_estimators=50, random_state=0)],
    ids=["linear", "random-forest"],
)
def test_regressors_convert_and_state_the_tolerance_used(estimator: object, diabetes: Data) -> None:
    features, y = diabetes
    estimator.fit(features, y)  # type: ignore[attr-defined]
    result = convert_sklearn_to_onnx(estimator, features)
    assert result.accepted, result.reason
    assert "values within 1e-05" in result.reason
    assert ("absolute" in result.reason) or ("relative" in result.reason)
    assert result.onnx_bytes is not None
    out = OnnxRuntime(result.onnx_bytes).predict(features.to_numpy(np.float32))
    np.testing.assert_allclose(out["value"], estimator.predict(features), rtol=1e-5)  # type: ignore[attr-defined]


def test_unconvertible_custom_transformer_falls_back_with_reason(cancer: Data) -> None:
    features, y = cancer
    model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression(max_iter=5000)).fit(
        features, y
    )
    result = convert_sklearn_to_onnx(model, features)
    assert not result.accepted
    assert result.onnx_bytes is None
    assert result.reason.startswith("skl2onnx")
    assert "cannot convert Pipeline" in result.reason


def test_histgradientboosting_is_either_verified_or_refused_with_reason(cancer: Data) -> None:
    features, y = cancer
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(features, y)
    result = convert_sklearn_to_onnx(model, features)
    if result.accepted:
        assert "labels equal" in result.reason
    else:
        assert "HistGradientBoostingClassifier" in result.reason
        assert result.onnx_bytes is None


def test_tolerance_failure_is_rejected_with_the_measured_difference(cancer: Data) -> None:
    features, y = cancer
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, y)
    result = convert_sklearn_to_onnx(model, features, probability_tolerance=1e-12)
    assert not result.accepted
    assert result.onnx_bytes is None
    assert "probabilities differ by" in result.reason
    assert "> 1e-12" in result.reason


def test_regression_tolerance_failure_is_rejected(diabetes: Data) -> None:
    features, y = diabetes
    model = LinearRegression().fit(features, y)
    result = convert_sklearn_to_onnx(model, features, value_tolerance=1e-12)
    assert not result.accepted
    assert "values differ on" in result.reason


def test_label_flips_near_the_decision_boundary_are_caught(cancer: Data) -> None:
    """Rows placed on the float64 boundary: float32 ONNX arithmetic flips some of them."""
    features, y = cancer
    model = LogisticRegression(max_iter=5000).fit(features.to_numpy(), y)
    w, b = model.coef_[0], model.intercept_[0]
    rng = np.random.default_rng(0)
    base = features.to_numpy()[rng.integers(0, len(features), 200)]
    # move each row along w so that w.x + b is a hair above zero in float64
    shift = (1e-9 - (base @ w + b)) / (w @ w)
    edge = base + shift[:, None] * w
    assert np.all(model.predict(edge) == 1)
    result = convert_sklearn_to_onnx(model, edge)
    assert not result.accepted
    assert "labels differ on" in result.reason


def test_mixed_types_convert_with_one_input_per_column(cancer: Data) -> None:
    features, y = cancer
    frame = features[["mean radius", "mean texture", "worst area"]].copy()
    frame["size"] = np.where(features["mean area"] > 700, "large", "small")
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), ["mean radius", "mean texture", "worst area"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["size"]),
        ]
    )
    model = Pipeline([("pre", pre), ("clf", LogisticRegression(max_iter=1000))]).fit(frame, y)
    matrix = frame.to_numpy(dtype=object)  # what the data plane passes for mixed types
    result = convert_sklearn_to_onnx(model, matrix)
    assert result.accepted, result.reason
    assert result.onnx_bytes is not None
    runtime = OnnxRuntime(result.onnx_bytes)
    assert runtime.metadata().n_features == 4
    out = runtime.predict(matrix)
    np.testing.assert_array_equal(out["label"], model.predict(frame))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(frame), atol=1e-5)


def test_empty_sample_is_not_accepted(cancer: Data) -> None:
    features, y = cancer
    model = LogisticRegression(max_iter=5000).fit(features, y)
    result = convert_sklearn_to_onnx(model, features.iloc[:0])
    assert not result.accepted
    assert "no rows" in result.reason

"""XGBoost and LightGBM runtimes load the libraries' own formats and match their predictions."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.datasets import load_iris

from medserve.core.errors import ModelLoadError, UnsupportedFormatError
from medserve.core.runtimes.lightgbm_runtime import LightGBMRuntime
from medserve.core.runtimes.loader import flavors, load_runtime
from medserve.core.runtimes.xgboost_runtime import XGBoostRuntime

Data = tuple[pd.DataFrame, pd.Series]


@pytest.mark.parametrize("suffix", ["json", "ubj"])
def test_xgboost_binary_classifier(
    tmp_path: Path, suffix: str, cancer: Data, cancer_matrix: np.ndarray
) -> None:
    _, y = cancer
    model = xgb.XGBClassifier(n_estimators=30, max_depth=3, n_jobs=1).fit(cancer_matrix, y)
    path = tmp_path / f"m.{suffix}"
    model.save_model(path)
    stored = tmp_path / "content-addressed-name-without-suffix"
    stored.write_bytes(path.read_bytes())
    runtime = load_runtime("xgboost", stored)
    assert isinstance(runtime, XGBoostRuntime)
    meta = runtime.metadata()
    assert (meta.task, meta.n_features, meta.class_labels) == ("classification", 30, [0, 1])
    out = runtime.predict(cancer_matrix)
    np.testing.assert_array_equal(out["label"], model.predict(cancer_matrix))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(cancer_matrix), atol=1e-6)


def test_xgboost_multiclass_and_regression(
    tmp_path: Path, diabetes: Data, diabetes_matrix: np.ndarray
) -> None:
    iris_x, iris_y = load_iris(return_X_y=True)
    iris_x = iris_x.astype(np.float32)
    clf = xgb.XGBClassifier(n_estimators=10, n_jobs=1).fit(iris_x, iris_y)
    clf.save_model(tmp_path / "iris.json")
    out = load_runtime("xgboost", tmp_path / "iris.json").predict(iris_x)
    np.testing.assert_array_equal(out["label"], clf.predict(iris_x))
    np.testing.assert_allclose(out["probabilities"], clf.predict_proba(iris_x), atol=1e-6)

    _, y = diabetes
    reg = xgb.XGBRegressor(n_estimators=30, n_jobs=1).fit(diabetes_matrix, y)
    reg.save_model(tmp_path / "reg.ubj")
    runtime = load_runtime("xgboost", tmp_path / "reg.ubj")
    assert runtime.metadata().task == "regression"
    np.testing.assert_allclose(
        runtime.predict(diabetes_matrix)["value"], reg.predict(diabetes_matrix), rtol=1e-6
    )


def test_lightgbm_binary_classifier(
    tmp_path: Path, cancer: Data, cancer_matrix: np.ndarray
) -> None:
    _, y = cancer
    model = lgb.LGBMClassifier(n_estimators=30, verbose=-1, n_jobs=1).fit(cancer_matrix, y)
    path = tmp_path / "m.txt"
    model.booster_.save_model(path)
    runtime = load_runtime("lightgbm", path)
    assert isinstance(runtime, LightGBMRuntime)
    meta = runtime.metadata()
    assert (meta.task, meta.n_features, meta.class_labels) == ("classification", 30, [0, 1])
    out = runtime.predict(cancer_matrix)
    np.testing.assert_array_equal(out["label"], model.predict(cancer_matrix))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(cancer_matrix), atol=1e-6)


def test_lightgbm_multiclass_and_regression(
    tmp_path: Path, diabetes: Data, diabetes_matrix: np.ndarray
) -> None:
    iris_x, iris_y = load_iris(return_X_y=True)
    clf = lgb.LGBMClassifier(n_estimators=10, verbose=-1, n_jobs=1).fit(iris_x, iris_y)
    clf.booster_.save_model(tmp_path / "iris.txt")
    runtime = load_runtime("lightgbm", tmp_path / "iris.txt")
    assert runtime.metadata().class_labels == [0, 1, 2]
    out = runtime.predict(iris_x)
    np.testing.assert_array_equal(out["label"], clf.predict(iris_x))
    np.testing.assert_allclose(out["probabilities"], clf.predict_proba(iris_x), atol=1e-6)

    _, y = diabetes
    reg = lgb.LGBMRegressor(n_estimators=30, verbose=-1, n_jobs=1).fit(diabetes_matrix, y)
    reg.booster_.save_model(tmp_path / "reg.txt")
    runtime = load_runtime("lightgbm", tmp_path / "reg.txt")
    assert runtime.metadata().task == "regression"
    np.testing.assert_allclose(
        runtime.predict(diabetes_matrix)["value"], reg.predict(diabetes_matrix), rtol=1e-5
    )


def test_corrupt_booster_files_fail_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b'{"learner": "nope"}')
    with pytest.raises(ModelLoadError):
        load_runtime("xgboost", bad)
    bad.write_text("tree\nversion=v4\nnonsense")
    with pytest.raises(ModelLoadError):
        load_runtime("lightgbm", bad)


def test_unknown_flavor_is_refused(tmp_path: Path) -> None:
    assert set(flavors()) >= {
        "onnx",
        "skops",
        "xgboost",
        "lightgbm",
        "pickle",
        "image",
        "text",
        "sequence",
        "ensemble",
    }
    assert "tensorflow" not in flavors()
    with pytest.raises(UnsupportedFormatError, match="tensorflow"):
        load_runtime("tensorflow", tmp_path)


@pytest.mark.parametrize("flavor", ["xgboost", "lightgbm"])
def test_boosters_convert_to_onnx_when_verified(
    tmp_path: Path, flavor: str, cancer: Data, cancer_matrix: np.ndarray
) -> None:
    from medserve.core.runtimes.convert import convert_booster_to_onnx
    from medserve.core.runtimes.onnx_runtime import OnnxRuntime

    _, y = cancer
    path = tmp_path / "model"
    if flavor == "xgboost":
        model: object = xgb.XGBClassifier(n_estimators=20, n_jobs=1).fit(cancer_matrix, y)
        model.save_model(path.with_suffix(".json"))  # type: ignore[attr-defined]
        path = path.with_suffix(".json")
    else:
        model = lgb.LGBMClassifier(n_estimators=20, verbose=-1, n_jobs=1).fit(cancer_matrix, y)
        model.booster_.save_model(path)  # type: ignore[attr-defined]
    result = convert_booster_to_onnx(flavor, path, cancer_matrix)
    assert result.accepted, result.reason
    assert result.reason.startswith("converted with onnxmltools")
    assert result.onnx_bytes is not None
    runtime = OnnxRuntime(result.onnx_bytes)
    assert runtime.metadata().class_labels == [0, 1]
    out = runtime.predict(cancer_matrix)
    np.testing.assert_array_equal(out["label"], model.predict(cancer_matrix))  # type: ignore[attr-defined]
    one = runtime.predict(cancer_matrix[:1])  # batch dimension is free, not fixed at 1
    assert one["probabilities"].shape == (1, 2)

    rejected = convert_booster_to_onnx(flavor, path, cancer_matrix, probability_tolerance=0.0)
    if not rejected.accepted:  # float32 trees can agree exactly; if not, the reason says so
        assert "probabilities differ by" in rejected.reason


def test_booster_regression_converts_to_onnx(
    tmp_path: Path, diabetes: Data, diabetes_matrix: np.ndarray
) -> None:
    from medserve.core.runtimes.convert import convert_booster_to_onnx

    _, y = diabetes
    reg = lgb.LGBMRegressor(n_estimators=30, verbose=-1, n_jobs=1).fit(diabetes_matrix, y)
    reg.booster_.save_model(tmp_path / "reg.txt")
    result = convert_booster_to_onnx("lightgbm", tmp_path / "reg.txt", diabetes_matrix)
    assert result.accepted, result.reason
    assert "values within" in result.reason

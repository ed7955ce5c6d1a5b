"""skops and pickle runtimes answer exactly as the estimator they load."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medserve.core.errors import UnsafeArtifactError
from medserve.core.runtimes.loader import load_runtime
from medserve.core.runtimes.pickle_runtime import PickleRuntime
from medserve.core.runtimes.skops_runtime import SkopsRuntime, load_skops_estimator

Data = tuple[pd.DataFrame, pd.Series]


class MajorityClassifier(ClassifierMixin, BaseEstimator):
    """A class outside sklearn/numpy/scipy: skops must not trust it by default."""

    def fit(self, features: np.ndarray, y: np.ndarray) -> MajorityClassifier:
        self.classes_ = np.unique(y)
        self.n_features_in_ = features.shape[1]
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.full(len(features), self.classes_[-1])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        out = np.zeros((len(features), len(self.classes_)))
        out[:, -1] = 1.0
        return out


def test_skops_classifier_fitted_on_a_dataframe(
    tmp_path: Path, cancer: Data, cancer_matrix: np.ndarray
) -> None:
    features, y = cancer
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, y)
    path = tmp_path / "m.skops"
    skops.io.dump(model, path)
    runtime = load_runtime("skops", path)
    assert isinstance(runtime, SkopsRuntime)
    out = runtime.predict(cancer_matrix)
    frame = pd.DataFrame(cancer_matrix, columns=features.columns)
    np.testing.assert_array_equal(out["label"], model.predict(frame))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(frame), rtol=1e-6)
    meta = runtime.metadata()
    assert (meta.runtime, meta.task, meta.n_features) == ("skops", "classification", 30)
    assert meta.class_labels == [0, 1]
    assert [o.name for o in meta.outputs] == ["label", "probabilities"]
    assert "scikit-learn" in meta.library_versions


def test_skops_random_forest_trusts_sklearn_tree_types(
    tmp_path: Path, cancer: Data, cancer_matrix: np.ndarray
) -> None:
    features, y = cancer
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(features.to_numpy(), y)
    path = tmp_path / "rf.skops"
    skops.io.dump(model, path)
    assert skops.io.get_untrusted_types(file=path)  # skops alone would refuse sklearn.tree types
    out = load_runtime("skops", path).predict(cancer_matrix)
    np.testing.assert_array_equal(out["label"], model.predict(cancer_matrix))
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(cancer_matrix))


def test_skops_regressor(tmp_path: Path, diabetes: Data, diabetes_matrix: np.ndarray) -> None:
    features, y = diabetes
    model = RandomForestRegressor(n_estimators=20, random_state=0).fit(features.to_numpy(), y)
    path = tmp_path / "rf.skops"
    skops.io.dump(model, path)
    runtime = load_runtime("skops", path)
    out = runtime.predict(diabetes_matrix)
    np.testing.assert_allclose(out["value"], model.predict(diabetes_matrix))
    assert runtime.metadata().task == "regression"
    assert runtime.metadata().class_labels is None


def test_skops_with_foreign_types_needs_the_trust_flag(tmp_path: Path, cancer: Data) -> None:
    features, y = cancer
    path = tmp_path / "custom.skops"
    skops.io.dump(MajorityClassifier().fit(features.to_numpy(), y.to_numpy()), path)
    with pytest.raises(UnsafeArtifactError, match="MajorityClassifier"):
        load_skops_estimator(path)
    estimator = load_skops_estimator(path, trust=True)
    assert isinstance(estimator, MajorityClassifier)


def test_pickle_refused_without_trust_and_served_with_it(
    tmp_path: Path, cancer: Data, cancer_matrix: np.ndarray
) -> None:
    features, y = cancer
    model = LogisticRegression(max_iter=5000).fit(features.to_numpy(), y)
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(model))
    with pytest.raises(UnsafeArtifactError, match="--trust-pickle"):
        load_runtime("pickle", path)
    runtime = load_runtime("pickle", path, trust_pickle=True)
    assert isinstance(runtime, PickleRuntime)
    assert runtime.metadata().runtime == "pickle"
    out = runtime.predict(cancer_matrix)
    np.testing.assert_array_equal(out["label"], model.predict(cancer_matrix))

"""Attributions + base value = the model's output, for each explanation method."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from medserve.core.loaded_model import LoadedModel, load_version
from medserve.core.registry.service import Registry
from medserve.core.registry.signature import infer_signature
from medserve.core.settings import Settings
from medserve.core.store.monitoring import MonitoringStore
from medserve.features.explain.explainers import PermutationExplainer, quantile_background
from medserve.features.explain.service import ExplainService


def _frames() -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.Series]:
    from sklearn.datasets import load_breast_cancer, load_diabetes

    bc = load_breast_cancer(as_frame=True)
    labels = pd.Series(np.asarray(bc.target_names)[bc.target], name="diagnosis")
    db = load_diabetes(as_frame=True)
    return bc.data, labels, db.data, db.target


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, D, t = _frames()
    registry = Registry.open(Settings(home=tmp_path_factory.mktemp("explain")))
    specs: list[tuple[str, Any, pd.DataFrame, pd.Series]] = [
        ("linear", make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), X, y),
        ("ridge", Ridge(alpha=1.0), D, t),
        ("forest", RandomForestClassifier(n_estimators=25, random_state=0), X, y),
        ("boosted", GradientBoostingRegressor(n_estimators=30, random_state=0), D, t),
        ("knn", make_pipeline(StandardScaler(), KNeighborsClassifier(15)), X, y),
    ]
    for name, estimator, frame, target in specs:
        estimator.fit(frame, target)
        registry.register(name, estimator, sample=frame, signature=infer_signature(frame))
    yield registry
    registry.close()


def _loaded(registry: Registry, name: str) -> LoadedModel:
    return load_version(registry.artifacts, registry.store.get_version(name, 1))


def _rows(loaded: LoadedModel, n: int = 5) -> np.ndarray:
    X, _, D, _ = _frames()
    frame = D if "age" in loaded.signature.feature_names else X
    sample = frame.sample(n, random_state=7)
    return loaded.validator.records_to_matrix(sample.to_dict("records"))


def _served_output(loaded: LoadedModel, X: np.ndarray, target: str | None) -> np.ndarray:
    outputs = loaded.predict(X)
    if target is None:
        return np.asarray(outputs["value"], dtype=np.float64).reshape(-1)
    assert loaded.class_keys is not None
    probs = np.asarray(outputs["probabilities"], dtype=np.float64)
    return probs[:, loaded.class_keys.index(target)]


@pytest.mark.parametrize(
    ("name", "method", "output"),
    [
        ("linear", "linear_exact", "log_odds"),
        ("ridge", "linear_exact", "value"),
        ("forest", "tree_shap", "probability"),
        ("boosted", "tree_shap", "value"),
        ("knn", "permutation_shapley", "probability"),
    ],
)
def test_attributions_sum_to_the_prediction(
    models: Registry, name: str, method: str, output: str
) -> None:
    loaded = _loaded(models, name)
    X = _rows(loaded)
    result = ExplainService(models.store, models.artifacts).explain(loaded, X)
    assert result["method"] == method
    assert result["output"] == output
    served = _served_output(loaded, X, result["target"])
    for i, entry in enumerate(result["explanations"]):
        total = entry["base_value"] + sum(entry["attributions"].values())
        assert total == pytest.approx(entry["prediction"], abs=1e-6)
        if output == "log_odds":
            p = 1 / (1 + np.exp(-entry["prediction"]))
            assert p == pytest.approx(served[i], abs=1e-4)
            p_base = 1 / (1 + np.exp(-entry["base_value"]))
            points = sum(entry["probability_points"].values())
            assert p_base + points == pytest.approx(p, abs=1e-9)
        else:
            assert entry["prediction"] == pytest.approx(served[i], rel=1e-4, abs=1e-4)
        assert entry["top"]
        assert len(entry["top"]) <= 3


def test_classifier_target_and_plain_words(models: Registry) -> None:
    loaded = _loaded(models, "forest")
    X = _rows(loaded, 1)
    service = ExplainService(models.store, models.artifacts)
    malignant = service.explain(loaded, X, "malignant")["explanations"][0]
    benign = service.explain(loaded, X, "benign")["explanations"][0]
    assert malignant["prediction"] + benign["prediction"] == pytest.approx(1.0, abs=1e-6)
    for name, value in malignant["attributions"].items():
        assert value == pytest.approx(-benign["attributions"][name], abs=1e-9)
    top = malignant["top"][0]
    assert "the probability of malignant by" in top
    assert "points" in top
    assert (
        top.split(" raised")[0].split(" lowered")[0].rsplit(" ", 1)[0]
        in loaded.signature.feature_names
    )


def test_global_importance_is_stored_at_registration(models: Registry) -> None:
    store = MonitoringStore(models.store)
    for name, method in (("linear", "linear_exact"), ("forest", "tree_shap")):
        reference, importance = store.reference(name, 1)
        assert importance is not None
        assert importance["method"] == method
        ranked = list(importance["features"].values())
        assert ranked == sorted(ranked, reverse=True)
        assert ranked[0] > 0
        assert "rows" not in reference
        assert reference["n"] == 569
        assert set(reference["features"]["mean radius"]) >= {"quantiles", "edges", "proportions"}


def test_permutation_explainer_is_exact_for_an_interaction() -> None:
    background = np.array([[0.0, 0.0], [1.0, 2.0]], dtype=np.float64)

    def f(X: np.ndarray) -> np.ndarray:
        return X[:, 0] * X[:, 1] + 3 * X[:, 0]

    x = np.array([[2.0, 5.0]])
    explanation = PermutationExplainer(f, background, output="value", target=None).explain(x)
    expected_base = float(f(background).mean())
    assert explanation.base[0] == pytest.approx(expected_base)
    assert explanation.base[0] + explanation.attributions.sum() == pytest.approx(float(f(x)[0]))
    # Exact two-feature Shapley values averaged over the background rows.
    phis = []
    for b in background:
        v0, v1, v01 = f(b[None])[0], f(np.array([[x[0, 0], b[1]]]))[0], f(x)[0]
        vb = f(np.array([[b[0], x[0, 1]]]))[0]
        phis.append([((v1 - v0) + (v01 - vb)) / 2, ((vb - v0) + (v01 - v1)) / 2])
    assert explanation.attributions[0] == pytest.approx(np.mean(phis, axis=0))


def test_background_holds_no_patient_row(models: Registry, tmp_path: Path) -> None:
    reference, _ = MonitoringStore(models.store).reference("knn", 1)
    loaded = _loaded(models, "knn")
    background = quantile_background(reference, loaded.signature.feature_names)
    X, _, _, _ = _frames()
    data = X.to_numpy(dtype=np.float32)
    for row in background:
        assert not np.any(np.all(np.isclose(data, row), axis=1))

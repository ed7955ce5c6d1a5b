"""Registration end to end: formats, safety gate, verified conversion, signatures, aliases."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FunctionTransformer, make_pipeline
from sklearn.preprocessing import StandardScaler

from medserve.core.errors import ArtifactIntegrityError, ModelLoadError, UnsafeArtifactError
from medserve.core.loaded_model import load_version
from medserve.core.registry.service import Registry
from medserve.core.registry.signature import Signature


@pytest.fixture(scope="module")
def breast_cancer() -> tuple[pd.DataFrame, pd.Series]:
    data = load_breast_cancer(as_frame=True)
    return data.data, data.target


@pytest.fixture(scope="module")
def lr(breast_cancer: tuple[pd.DataFrame, pd.Series]) -> object:
    X, y = breast_cancer
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)


def test_skops_file_with_sample_is_converted_and_verified(
    registry: Registry, tmp_path: Path, lr: object, breast_cancer: tuple[pd.DataFrame, pd.Series]
) -> None:
    X, _ = breast_cancer
    path = tmp_path / "model.skops"
    skops.io.dump(lr, path)
    version = registry.register("bc", path, sample=X, alias="staging", created_by="alice")
    assert version.version == 1
    assert version.flavor == "onnx"
    assert version.runtime == "onnxruntime"
    assert "569 sample rows" in version.runtime_reason
    assert version.source_flavor == "sklearn"
    assert version.source_artifact_sha256 is not None
    assert registry.artifacts.exists(version.source_artifact_sha256)
    assert version.library_versions["scikit-learn"]
    sig = Signature.model_validate(version.signature)
    assert sig.feature_names == list(X.columns)
    assert sig.task == "classification"
    assert sig.class_labels == [0, 1]
    assert registry.store.get_alias("bc", "staging") == 1
    (event,) = registry.store.alias_history("bc", "staging")
    assert event.actor == "alice"
    loaded = load_version(registry.artifacts, version)
    out = loaded.predict_records(X.iloc[:10].to_dict(orient="records"))
    expected = lr.predict_proba(X.iloc[:10])  # type: ignore[attr-defined]
    got = np.array([[p["probabilities"]["0"], p["probabilities"]["1"]] for p in out["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_without_sample_the_sklearn_runtime_is_kept_and_why(
    registry: Registry, tmp_path: Path, lr: object
) -> None:
    path = tmp_path / "model.skops"
    skops.io.dump(lr, path)
    version = registry.register("bc", path)
    assert version.flavor == "skops"
    assert "no registration sample" in version.runtime_reason
    assert Signature.model_validate(version.signature).feature_names[0] == "mean radius"


def test_unconvertible_model_falls_back_with_reason(
    registry: Registry, breast_cancer: tuple[pd.DataFrame, pd.Series]
) -> None:
    X, y = breast_cancer
    model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression(max_iter=2000)).fit(
        X, y
    )
    version = registry.register("bc-log", model, sample=X)
    assert version.flavor == "skops"
    assert version.runtime_reason.startswith("ONNX conversion rejected")


def test_pickle_refused_without_trust_flag(
    registry: Registry, tmp_path: Path, lr: object, breast_cancer: tuple[pd.DataFrame, pd.Series]
) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(lr))
    with pytest.raises(UnsafeArtifactError, match="--trust-pickle"):
        registry.register("bc", path, sample=breast_cancer[0])
    assert registry.store.list_models().items == []  # nothing half-registered
    version = registry.register("bc", path, sample=breast_cancer[0], trust_pickle=True)
    assert version.source_flavor == "sklearn-pickle"
    assert version.flavor == "onnx"  # served from the verified conversion, not the pickle


def test_mlflow_directory_imports(registry: Registry, tmp_path: Path) -> None:
    import mlflow.sklearn

    data = load_diabetes(as_frame=True)
    model = RandomForestRegressor(n_estimators=10, random_state=0).fit(data.data, data.target)
    target = tmp_path / "mlflow-model"
    mlflow.sklearn.save_model(
        model,
        target,
        serialization_format="skops",
        skops_trusted_types=["sklearn.tree._tree.Tree"],
        input_example=data.data.iloc[:3],
        pip_requirements=["scikit-learn"],
    )
    version = registry.register("diabetes", target, sample=data.data)
    assert version.source_flavor == "mlflow-sklearn"
    assert version.flavor == "onnx"
    assert "mlflow" in version.library_versions
    loaded = load_version(registry.artifacts, version)
    got = [
        p["value"]
        for p in loaded.predict_records(data.data.iloc[:5].to_dict(orient="records"))["predictions"]
    ]
    np.testing.assert_allclose(got, model.predict(data.data.iloc[:5]), rtol=1e-4)


def test_xgboost_json_registration_converts_and_matches(
    registry: Registry, tmp_path: Path, breast_cancer: tuple[pd.DataFrame, pd.Series]
) -> None:
    import xgboost

    X, y = breast_cancer
    booster = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(X, y)
    path = tmp_path / "model.json"
    booster.save_model(path)
    version = registry.register("bc-xgb", path, sample=X)
    assert version.source_flavor == "xgboost"
    loaded = load_version(registry.artifacts, version)
    out = loaded.predict_records(X.iloc[:20].to_dict(orient="records"))
    got = np.array([p["probabilities"]["1"] for p in out["predictions"]])
    np.testing.assert_allclose(got, booster.predict_proba(X.iloc[:20])[:, 1], atol=1e-5)


def test_tampered_artifact_is_not_served(
    registry: Registry, lr: object, breast_cancer: tuple[pd.DataFrame, pd.Series]
) -> None:
    version = registry.register("bc", lr, sample=breast_cancer[0])
    path = registry.artifacts.path(version.artifact_sha256)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="failed to load") as caught:
        load_version(registry.artifacts, version)
    assert isinstance(caught.value.__cause__, ArtifactIntegrityError)

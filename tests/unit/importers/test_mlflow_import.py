"""Import real MLflow models (written by mlflow.sklearn.save_model) both ways."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medserve.core.errors import UnsafeArtifactError, UnsupportedFormatError
from medserve.core.importers import detect_format
from medserve.core.importers.mlflow import read_mlflow_model

pytestmark = [
    # mlflow's pyfunc module warns about its own Any type hints when first imported
    pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning"),
]


@pytest.fixture(scope="module")
def trained() -> tuple[Any, pd.DataFrame]:
    data: Any = load_breast_cancer(as_frame=True)
    features = data.data
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
        features, data.target
    )
    return model, features


def _save(model: Any, features: pd.DataFrame, path: Path, fmt: str) -> Path:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    signature = infer_signature(features, model.predict(features))
    mlflow.sklearn.save_model(
        model,
        str(path),
        serialization_format=fmt,
        signature=signature,
        pip_requirements=["scikit-learn"],  # skip mlflow's slow requirement inference
    )
    return path


@pytest.fixture(scope="module")
def skops_dir(tmp_path_factory: pytest.TempPathFactory, trained: tuple[Any, pd.DataFrame]) -> Path:
    return _save(*trained, tmp_path_factory.mktemp("mlflow") / "skops-model", "skops")


@pytest.fixture(scope="module")
def pickle_dir(tmp_path_factory: pytest.TempPathFactory, trained: tuple[Any, pd.DataFrame]) -> Path:
    return _save(*trained, tmp_path_factory.mktemp("mlflow") / "pickle-model", "cloudpickle")


def test_skops_mlflow_model_imports_safely(
    skops_dir: Path, trained: tuple[Any, pd.DataFrame]
) -> None:
    import mlflow

    model, features = trained
    assert detect_format(skops_dir) == "mlflow"
    imported = read_mlflow_model(skops_dir, trust_pickle=False)
    assert imported.serialization_format == "skops"
    assert imported.mlflow_version == mlflow.__version__
    import sklearn

    assert imported.sklearn_version == sklearn.__version__
    assert imported.feature_names == list(features.columns)
    assert imported.columns == [(name, "double") for name in features.columns]
    assert imported.outputs
    assert imported.outputs[0]["type"] == "tensor"
    np.testing.assert_array_equal(imported.estimator.predict(features), model.predict(features))
    np.testing.assert_allclose(
        imported.estimator.predict_proba(features), model.predict_proba(features)
    )


def test_cloudpickle_mlflow_model_needs_the_trust_flag(
    pickle_dir: Path, trained: tuple[Any, pd.DataFrame]
) -> None:
    model, features = trained
    with pytest.raises(UnsafeArtifactError, match="--trust-pickle"):
        read_mlflow_model(pickle_dir, trust_pickle=False)
    imported = read_mlflow_model(pickle_dir, trust_pickle=True)
    assert imported.serialization_format == "cloudpickle"
    assert imported.columns[0] == ("mean radius", "double")
    np.testing.assert_array_equal(imported.estimator.predict(features), model.predict(features))


def test_non_sklearn_flavor_is_unsupported(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: mlflow.pytorch\n"
    )
    with pytest.raises(UnsupportedFormatError, match="python_function"):
        read_mlflow_model(tmp_path, trust_pickle=True)


def test_mlmodel_cannot_point_outside_its_directory(tmp_path: Path, skops_dir: Path) -> None:
    from medserve.core.errors import InvalidRequestError

    (tmp_path / "MLmodel").write_text(
        "flavors:\n  sklearn:\n    pickled_model: ../../etc/passwd\n"
        "    serialization_format: skops\n"
    )
    with pytest.raises(InvalidRequestError, match="outside"):
        read_mlflow_model(tmp_path, trust_pickle=False)

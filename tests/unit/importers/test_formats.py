"""Format detection by content, and the pickle safety gate."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import joblib
import lightgbm as lgb
import numpy as np
import pytest
import skops.io
import xgboost as xgb
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

from medserve.core.artifacts import ArtifactStore
from medserve.core.errors import UnsafeArtifactError, UnsupportedFormatError
from medserve.core.importers import FORMATS, detect_format, ensure_safe
from medserve.core.runtimes.convert import convert_sklearn_to_onnx


@pytest.fixture(scope="module")
def fitted() -> tuple[LogisticRegression, np.ndarray, np.ndarray]:
    features, y = load_breast_cancer(return_X_y=True)
    features = features.astype(np.float32)
    return LogisticRegression(max_iter=5000).fit(features, y), features, y


@pytest.fixture(scope="module")
def model_files(
    tmp_path_factory: pytest.TempPathFactory,
    fitted: tuple[LogisticRegression, np.ndarray, np.ndarray],
) -> dict[str, Path]:
    model, features, y = fitted
    root = tmp_path_factory.mktemp("formats")
    files: dict[str, Path] = {}
    result = convert_sklearn_to_onnx(model, features)
    assert result.onnx_bytes is not None
    files["onnx"] = root / "m.onnx"
    files["onnx"].write_bytes(result.onnx_bytes)
    files["skops"] = root / "m.skops"
    skops.io.dump(model, files["skops"])
    booster = xgb.XGBClassifier(n_estimators=3, n_jobs=1).fit(features, y)
    files["xgboost-json"] = root / "m.json"
    booster.save_model(files["xgboost-json"])
    files["xgboost-ubj"] = root / "m.ubj"
    booster.save_model(files["xgboost-ubj"])
    files["lightgbm-text"] = root / "m.txt"
    lgb.LGBMClassifier(n_estimators=3, verbose=-1).fit(features, y).booster_.save_model(
        files["lightgbm-text"]
    )
    files["mlflow"] = root / "mlflow-model"
    files["mlflow"].mkdir()
    (files["mlflow"] / "MLmodel").write_text("flavors: {}\n")
    files["pickle"] = root / "m.pkl"
    files["pickle"].write_bytes(pickle.dumps(model))
    return files


def test_every_format_is_detected(model_files: dict[str, Path]) -> None:
    assert set(model_files) == set(FORMATS)
    for fmt, path in model_files.items():
        assert detect_format(path) == fmt, path.name


def test_detection_uses_content_not_the_name(model_files: dict[str, Path], tmp_path: Path) -> None:
    """The content-addressed store keeps no extension; detection must still work."""
    store = ArtifactStore(tmp_path / "store")
    for fmt, path in model_files.items():
        if fmt == "mlflow":
            continue
        stored = store.path(store.put_file(path))
        assert stored.suffix == ""
        assert detect_format(stored) == fmt


def test_a_pickle_named_onnx_is_still_pickle(
    fitted: tuple[LogisticRegression, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    disguised = tmp_path / "model.onnx"
    disguised.write_bytes(pickle.dumps(fitted[0]))
    assert detect_format(disguised) == "pickle"


@pytest.mark.parametrize("compress", [0, 3])
def test_joblib_files_are_pickle(
    fitted: tuple[LogisticRegression, np.ndarray, np.ndarray], tmp_path: Path, compress: int
) -> None:
    path = tmp_path / "model.bin"
    joblib.dump(fitted[0], path, compress=compress)
    assert detect_format(path) == "pickle"
    assert detect_format(path.rename(tmp_path / "m.joblib")) == "pickle"


def test_unrecognised_inputs_are_unsupported(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a model")
    plain_zip = tmp_path / "bundle.zip"
    with zipfile.ZipFile(plain_zip, "w") as zf:
        zf.writestr("readme.txt", "x")
    other_json = tmp_path / "config.json"
    other_json.write_text('{"learning_rate": 0.1}')
    empty_dir = tmp_path / "dir"
    empty_dir.mkdir()
    for path in (text, plain_zip, other_json, empty_dir, tmp_path / "missing.onnx"):
        with pytest.raises(UnsupportedFormatError):
            detect_format(path)


def test_ensure_safe_refuses_pickle_unless_trusted() -> None:
    with pytest.raises(UnsafeArtifactError) as refused:
        ensure_safe("pickle", trust_pickle=False)
    message = refused.value.message
    assert "--trust-pickle" in message
    assert "skops" in message
    assert "ONNX" in message
    ensure_safe("pickle", trust_pickle=True)
    for fmt in FORMATS:
        if fmt != "pickle":
            ensure_safe(fmt, trust_pickle=False)
    with pytest.raises(UnsupportedFormatError):
        ensure_safe("h5", trust_pickle=True)

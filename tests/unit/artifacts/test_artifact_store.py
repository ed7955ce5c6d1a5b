"""The content-addressed store: naming, idempotence, read-only files, tamper detection."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from medserve.core.artifacts import ArtifactStore
from medserve.core.errors import ArtifactIntegrityError, InvalidRequestError, NotFoundError


def _flip_a_byte(path: Path) -> None:
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def test_put_bytes_names_content_by_sha256_and_lays_out_by_prefix(store: ArtifactStore) -> None:
    data = b"model bytes" * 1000
    sha = store.put_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest()
    location = store.path(sha)
    assert location == store.root / sha[:2] / sha
    assert location.read_bytes() == data
    assert store.exists(sha)
    assert store.read_bytes(sha) == data


def test_stored_files_are_read_only(store: ArtifactStore) -> None:
    sha = store.put_bytes(b"abc")
    mode = store.path(sha).stat().st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def test_put_is_idempotent_and_put_file_matches_put_bytes(
    store: ArtifactStore, tmp_path: Path
) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"\x08\x07same content")
    first = store.put_file(source)
    assert store.put_file(source) == first
    assert store.put_bytes(source.read_bytes()) == first
    assert list(store.iter_shas()) == [first]
    assert list((store.root / ".tmp").iterdir()) == []  # no temp files left behind


def test_tampered_artifact_is_refused_naming_its_sha(store: ArtifactStore) -> None:
    sha = store.put_bytes(b"trusted model weights " * 64)
    _flip_a_byte(store.path(sha))
    with pytest.raises(ArtifactIntegrityError, match=sha):
        store.path(sha)
    with pytest.raises(ArtifactIntegrityError, match=sha):
        store.read_bytes(sha)
    # unverified access still finds the file (for forensics), verified access never does
    assert store.path(sha, verify=False).exists()


def test_putting_the_same_content_again_repairs_a_tampered_copy(store: ArtifactStore) -> None:
    data = b"weights" * 100
    sha = store.put_bytes(data)
    _flip_a_byte(store.path(sha))
    assert store.put_bytes(data) == sha
    assert store.read_bytes(sha) == data


def test_missing_and_malformed_ids(store: ArtifactStore) -> None:
    missing = "0" * 64
    assert not store.exists(missing)
    with pytest.raises(NotFoundError, match=missing):
        store.path(missing)
    with pytest.raises(InvalidRequestError):
        store.path("../../etc/passwd")


def test_put_file_rejects_a_directory(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError):
        store.put_file(tmp_path)


def test_a_tampered_model_never_reaches_a_runtime(store: ArtifactStore) -> None:
    import numpy as np
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    from medserve.core.runtimes.convert import convert_sklearn_to_onnx
    from medserve.core.runtimes.loader import load_runtime

    features, y = load_breast_cancer(return_X_y=True)
    model = LogisticRegression(max_iter=5000).fit(features, y)
    result = convert_sklearn_to_onnx(model, features.astype(np.float32))
    assert result.onnx_bytes is not None
    sha = store.put_bytes(result.onnx_bytes)
    assert load_runtime("onnx", store.path(sha)).predict(features[:1].astype(np.float32))[
        "label"
    ].shape == (1,)
    _flip_a_byte(store.path(sha))
    with pytest.raises(ArtifactIntegrityError, match=sha):
        load_runtime("onnx", store.path(sha))

"""Artifacts on S3-compatible storage (moto's server on loopback): content addressing, the
read-through cache and its bound, and refusal of tampered objects at load."""

from __future__ import annotations

import hashlib
from pathlib import Path

import boto3
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from medserve.core.artifacts import S3ArtifactStore, open_artifact_store, parse_s3_uri
from medserve.core.errors import (
    ArtifactIntegrityError,
    InvalidRequestError,
    ModelLoadError,
    NotFoundError,
)
from medserve.core.loaded_model import load_version
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings


@pytest.fixture
def store(s3_uri: str, tmp_path: Path) -> S3ArtifactStore:
    made = open_artifact_store(s3_uri, tmp_path / "cache", cache_max_bytes=1 << 20)
    assert isinstance(made, S3ArtifactStore)
    return made


def _object_bytes(store: S3ArtifactStore, sha: str) -> bytes:
    body = boto3.client("s3").get_object(Bucket=store.bucket, Key=store._key(sha))["Body"]
    return bytes(body.read())


def _tamper(store: S3ArtifactStore, sha: str, data: bytes) -> None:
    boto3.client("s3").put_object(Bucket=store.bucket, Key=store._key(sha), Body=data)


def _drop_cache(store: S3ArtifactStore, sha: str) -> None:
    cached = store.root / sha[:2] / sha
    cached.unlink(missing_ok=True)


def test_uri_is_parsed_and_a_bad_one_named() -> None:
    assert parse_s3_uri("s3://models-bucket/med/serve/") == ("models-bucket", "med/serve")
    assert parse_s3_uri("s3://models-bucket") == ("models-bucket", "")
    with pytest.raises(InvalidRequestError, match="s3://bucket/prefix"):
        parse_s3_uri("s3://A_bad_bucket/x")
    with pytest.raises(InvalidRequestError, match="MEDSERVE_ARTIFACT_URI"):
        open_artifact_store("gs://elsewhere/x", Path("/tmp/unused"))


def test_put_names_the_object_by_its_sha256_under_the_prefix(store: S3ArtifactStore) -> None:
    data = b"onnx bytes" * 5000
    sha = store.put_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store._key(sha) == f"artifacts/{sha[:2]}/{sha}"
    assert _object_bytes(store, sha) == data
    assert store.exists(sha)
    assert list(store.iter_shas()) == [sha]
    assert store.put_bytes(data) == sha  # idempotent: the same bytes, the same single object


def test_a_cold_node_reads_through_its_own_cache(store: S3ArtifactStore, tmp_path: Path) -> None:
    sha = store.put_bytes(b"shared model")
    other = S3ArtifactStore(store.bucket, store.prefix, tmp_path / "other-node-cache")
    assert not (other.root / sha[:2] / sha).exists()
    assert other.read_bytes(sha) == b"shared model"
    assert (other.root / sha[:2] / sha).is_file()  # cached for the next load


def test_a_tampered_object_is_refused_at_load(store: S3ArtifactStore) -> None:
    sha = store.put_bytes(b"the approved model")
    _tamper(store, sha, b"a different model")
    _drop_cache(store, sha)
    with pytest.raises(ArtifactIntegrityError, match="refusing to load"):
        store.path(sha)
    assert not (store.root / sha[:2] / sha).exists()  # never enters the cache


def test_a_damaged_cache_copy_is_fetched_again(store: S3ArtifactStore) -> None:
    sha = store.put_bytes(b"the approved model")
    cached = store.path(sha)
    cached.chmod(0o600)
    cached.write_bytes(b"bit rot")
    assert store.read_bytes(sha) == b"the approved model"


def test_a_missing_object_is_not_found(store: S3ArtifactStore) -> None:
    with pytest.raises(NotFoundError, match="not in the artifact store"):
        store.path("0" * 64)
    assert not store.exists("0" * 64)


def test_the_cache_is_bounded_least_recently_used_first(s3_uri: str, tmp_path: Path) -> None:
    store = S3ArtifactStore(*parse_s3_uri(s3_uri), tmp_path / "cache", cache_max_bytes=250_000)
    first = store.put_bytes(b"a" * 100_000)
    second = store.put_bytes(b"b" * 100_000)
    store.path(first)  # first is now the most recently used
    third = store.put_bytes(b"c" * 100_000)
    assert store.cached_bytes() <= 250_000
    cached = {p.name for p in store.root.glob("??/*")}
    assert cached == {first, third}  # second, least recently used, was evicted
    assert store.read_bytes(second) == b"b" * 100_000  # and comes back from the bucket


def test_a_registered_model_loads_from_s3_and_a_tampered_one_does_not(
    s3_uri: str, tmp_path: Path
) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    y = (X["a"] > 0).astype(int)
    settings = Settings(home=tmp_path / "home", artifact_uri=s3_uri)
    registry = Registry.open(settings)
    try:
        assert isinstance(registry.artifacts, S3ArtifactStore)
        version = registry.register("risk", LogisticRegression().fit(X, y), sample=X)
        # a second node: same bucket, an empty cache
        node = S3ArtifactStore(*parse_s3_uri(s3_uri), tmp_path / "node-cache")
        loaded = load_version(node, version)
        assert loaded.predict(np.asarray(X.iloc[:2], dtype=np.float32))
        _tamper(node, version.artifact_sha256, b"not the registered model")
        _drop_cache(node, version.artifact_sha256)
        with pytest.raises(ModelLoadError, match="failed its integrity check"):
            load_version(node, version)
    finally:
        registry.close()

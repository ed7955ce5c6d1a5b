"""Model manager: alias following, LRU of explicit versions, failure isolation (in-process)."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge

from medserve.core.errors import (
    AliasNotFoundError,
    ModelNotFoundError,
    ModelUnavailableError,
    VersionNotFoundError,
)
from medserve.core.registry.service import Registry
from medserve.serving.model_manager import ModelManager


@pytest.fixture(scope="module")
def diabetes() -> tuple[pd.DataFrame, pd.Series]:
    data = load_diabetes(as_frame=True)
    return data.data, data.target


def _register(
    registry: Registry, data: tuple[pd.DataFrame, pd.Series], n: int, alias: str | None = None
) -> int:
    X, y = data
    model = Ridge(alpha=float(n)).fit(X, y)
    return registry.register("diab", model, sample=X, alias=alias).version


def test_follows_alias_moves_after_sync(
    registry: Registry, diabetes: tuple[pd.DataFrame, pd.Series]
) -> None:
    v1 = _register(registry, diabetes, 1, alias="production")
    v2 = _register(registry, diabetes, 2)
    manager = ModelManager(registry.store, registry.artifacts)
    manager.start(poll_interval_s=0)
    assert manager.get("diab", "production").number == v1
    registry.store.set_alias("diab", "production", v2, actor="t")
    assert manager.cached("diab", "production").number == v1  # type: ignore[union-attr]
    assert manager.sync() is True
    assert manager.cached("diab", "production").number == v2  # type: ignore[union-attr]
    assert manager.sync() is False  # nothing changed since
    assert manager.aliases_of("diab", v2) == ["production"]


def test_errors_say_what_is_missing(
    registry: Registry, diabetes: tuple[pd.DataFrame, pd.Series]
) -> None:
    _register(registry, diabetes, 1)
    manager = ModelManager(registry.store, registry.artifacts)
    manager.start(poll_interval_s=0)
    with pytest.raises(AliasNotFoundError, match="no 'production' alias"):
        manager.get("diab", "production")
    with pytest.raises(ModelNotFoundError):
        manager.get("nope", "production")
    with pytest.raises(VersionNotFoundError):
        manager.get("diab", "7")
    # An alias set after start is found on first use, without waiting for a poll.
    registry.store.set_alias("diab", "staging", 1, actor="t")
    assert manager.get("diab", "staging").number == 1


def test_explicit_versions_are_bounded_by_lru(
    registry: Registry, diabetes: tuple[pd.DataFrame, pd.Series]
) -> None:
    versions = [_register(registry, diabetes, n) for n in range(1, 5)]
    registry.store.set_alias("diab", "production", versions[0], actor="t")
    manager = ModelManager(registry.store, registry.artifacts, max_explicit=2)
    manager.start(poll_interval_s=0)
    for number in versions[1:]:
        manager.get("diab", str(number))
    assert not manager.is_ready("diab", versions[1])  # evicted: least recently used
    assert manager.is_ready("diab", versions[2])
    assert manager.is_ready("diab", versions[3])
    assert manager.is_ready("diab", versions[0])  # aliased versions always stay
    assert manager.get("diab", str(versions[1])).number == versions[1]  # loads again on demand


def test_a_broken_version_is_unavailable_alone(
    registry: Registry, diabetes: tuple[pd.DataFrame, pd.Series]
) -> None:
    good = _register(registry, diabetes, 1, alias="production")
    X, y = diabetes
    broken = registry.register("other", Ridge().fit(X, y), sample=X, alias="production")
    path = registry.artifacts.path(broken.artifact_sha256)
    path.chmod(0o644)
    path.write_bytes(b"not an onnx model")
    manager = ModelManager(registry.store, registry.artifacts)
    manager.start(poll_interval_s=0)
    with pytest.raises(ModelUnavailableError, match="failed to load"):
        manager.get("other", "production")
    assert manager.get("diab", "production").number == good
    assert list(manager.failures()) == [("other", broken.version)]

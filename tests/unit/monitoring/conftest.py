"""A home with the breast-cancer models registered once, copied fresh for each test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings


def register_breast_cancer(registry: Registry) -> None:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medserve.core.registry.signature import infer_signature
    from medserve.faces.demo.data import breast_cancer_frame

    X, y = breast_cancer_frame()
    signature = infer_signature(X, range_margin=0.5)
    linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    forest = RandomForestClassifier(n_estimators=30, random_state=0)
    for name, estimator in (("breast-cancer", linear), ("breast-cancer-rf", forest)):
        estimator.fit(X, y)
        registry.register(name, estimator, sample=X, signature=signature, alias="production")


@pytest.fixture(scope="session")
def bc_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bc-template")
    registry = Registry.open(Settings(home=path))
    try:
        register_breast_cancer(registry)
    finally:
        registry.close()
    return path


@pytest.fixture
def bc_home(bc_template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "home"
    shutil.copytree(bc_template, path)
    return path


@pytest.fixture
def bc_registry(bc_home: Path) -> Iterator[Registry]:
    registry = Registry.open(Settings(home=bc_home))
    yield registry
    registry.close()

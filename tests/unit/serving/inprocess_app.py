"""Helpers for in-process HTTP tests of the serving extensions: a home with one classifier, the
app of ``create_app`` run with its lifespan by Starlette's ``TestClient``, keys and alerts."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient
from tests.support import fire_alert_in

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.monitoring import MonitoringStore
from medserve.faces.app import create_app
from medserve.faces.demo.data import breast_cancer_frame
from medserve.features.security.keys import SecurityStore
from medserve.serving.fast_path import HotPathApp

MODEL = "breast-cancer"


def make_template(path: Path) -> Path:
    """A home with ``breast-cancer`` v1 (a fitted logistic regression) as production."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medserve.core.registry.signature import infer_signature

    X, y = breast_cancer_frame()
    estimator = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    estimator.fit(X, y)
    registry = Registry.open(Settings(home=path))
    try:
        registry.register(
            MODEL,
            estimator,
            sample=X,
            signature=infer_signature(X, range_margin=0.5),
            alias="production",
        )
    finally:
        registry.close()
    return path


def copy_home(template: Path, target: Path) -> Path:
    shutil.copytree(template, target)
    return target


def records(n: int = 1) -> list[dict[str, float]]:
    frame = breast_cancer_frame()[0].iloc[:n]
    return [{str(k): float(v) for k, v in row.items()} for row in frame.to_dict("records")]


@contextmanager
def registry_at(home: Path) -> Iterator[Registry]:
    registry = Registry.open(Settings(home=home))
    try:
        yield registry
    finally:
        registry.close()


def create_key(home: Path, roles: list[str], **kwargs: Any) -> dict[str, str]:
    """Headers carrying a new API key of ``home``."""
    with registry_at(home) as registry:
        store = SecurityStore(registry.store.engine)  # type: ignore[attr-defined]
        token = store.create_key("test", roles, **kwargs).token
    return {"Authorization": f"Bearer {token}"}


def fire_alert(home: Path, model: str = MODEL) -> int:
    """A firing alert of ``model`` (as a monitoring run would leave it); its id."""
    with registry_at(home) as registry:
        return fire_alert_in(MonitoringStore(registry.store), model)


@contextmanager
def serve(home: Path, *, security: bool) -> Iterator[tuple[TestClient, Any]]:
    """The app over ``home`` with its lifespan running; the client and the server's resources."""
    settings = Settings(home=home, security=security, workers=1, reload_interval_s=60)
    app = create_app(settings)
    inner: Any = app
    while not isinstance(inner, HotPathApp):  # the extensions' middleware, outermost first
        inner = inner.app
    with TestClient(app) as client:
        yield client, inner.resources

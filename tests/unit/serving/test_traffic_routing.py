"""The manager's routes: none (and the hot-path lookup unchanged) without a split; a split
alias leaves the hot-path map and is chosen by a keyed hash of the patient or request."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from medserve.core.context import RequestContext
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.traffic import TrafficStore
from medserve.serving.model_manager import ModelManager
from medserve.serving.traffic import BUCKETS, RoutedModel, bucket_of


def _registry(tmp_path: Path) -> Registry:
    registry = Registry.open(Settings(home=tmp_path / "home"))
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(50, 2)), columns=["a", "b"])
    y = (X["a"] > 0).astype(int)
    registry.register("m", LogisticRegression().fit(X, y), sample=X, alias="production")
    registry.register("m", LogisticRegression(C=0.1).fit(X, y), sample=X)
    return registry


def test_no_split_means_no_route_and_the_same_hot_lookup(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    manager = ModelManager(registry.store, registry.artifacts)
    try:
        manager.sync()
        assert manager.routes == {}
        assert manager.shadowing is False
        model = manager.cached("m", "production")
        assert model is not None
        assert type(model) is not RoutedModel
        TrafficStore(registry.store).set_routes("m", "production", {2: 25}, [], actor="t")
        manager.sync()
        assert manager.cached("m", "production") is None  # routed aliases leave the hot map
        assert manager.cached("m", "1") is not None  # explicit versions are not split
        route = manager.routes[("m", "production")]
        picks = Counter(
            route.choose(RequestContext(request_id=f"r{i}")).number for i in range(4000)
        )
        assert 850 <= picks[2] <= 1150  # 25% of 4000, within ~5 standard deviations
        patient = RequestContext(request_id="x", patient_id="Patient/123")
        assert len({route.choose(patient).number for _ in range(20)}) == 1
        TrafficStore(registry.store).set_routes("m", "production", {}, [], actor="t")
        manager.sync()
        assert manager.routes == {}
        assert manager.cached("m", "production") is not None
    finally:
        manager.stop()
        registry.close()


def test_buckets_are_uniform_and_keyed() -> None:
    counts = Counter(bucket_of(b"salt", f"req-{i}") * 10 // BUCKETS for i in range(20_000))
    assert all(1800 <= c <= 2200 for c in counts.values())
    assert bucket_of(b"one", "Patient/1") == bucket_of(b"one", "Patient/1")
    different = sum(bucket_of(b"one", f"p{i}") != bucket_of(b"two", f"p{i}") for i in range(100))
    assert different > 90


def test_ramping_a_canary_keeps_its_patients(tmp_path: Path) -> None:
    """From 10% to 60% (where the canary becomes the alias's version), every patient the
    canary answered stays on it: buckets are laid out by version, not primary first."""
    registry = _registry(tmp_path)
    manager = ModelManager(registry.store, registry.artifacts)
    traffic = TrafficStore(registry.store)
    patients = [RequestContext(request_id="x", patient_id=f"Patient/{i}") for i in range(2000)]
    try:
        traffic.set_routes("m", "production", {2: 10}, [], actor="t")
        manager.sync()
        before = {
            p.patient_id
            for p in patients
            if manager.routes[("m", "production")].choose(p).number == 2
        }
        registry.set_alias("m", "production", 2, actor="t")
        traffic.set_routes("m", "production", {1: 40}, [], actor="t")
        manager.sync()
        route = manager.routes[("m", "production")]
        after = {p.patient_id for p in patients if route.choose(p).number == 2}
        assert 150 <= len(before) <= 250  # ~10% of 2,000
        assert before <= after
        assert 1100 <= len(after) <= 1300  # ~60%
    finally:
        manager.stop()
        registry.close()

"""The demo ensemble over the two breast-cancer demo models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sklearn.datasets import load_breast_cancer

from medserve.core.loaded_model import load_version
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.faces.demo.composition import ENSEMBLE_MODEL, MEMBERS, register_demo_ensemble


def test_demo_ensemble_is_production_and_averages_the_demo_models(
    demo_home: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(demo_home, home, ignore=shutil.ignore_patterns("*.log", "prometheus"))
    registry = Registry.open(Settings(home=home))
    try:
        version = register_demo_ensemble(registry)
        assert register_demo_ensemble(registry) == version  # idempotent
        assert registry.store.get_alias(ENSEMBLE_MODEL, "production") == version.version
        ensemble = load_version(registry.artifacts, version)
        members = [
            load_version(
                registry.artifacts,
                registry.store.get_version(name, registry.store.get_alias(name, "production")),
            )
            for name in MEMBERS
        ]
        assert ensemble.signature.feature_names == members[0].signature.feature_names
        frame = load_breast_cancer(as_frame=True).data
        rows = [{k: float(v) for k, v in r.items()} for r in frame.iloc[:5].to_dict("records")]
        got = ensemble.predict_records(rows)["predictions"]
        answers = [m.predict_records(rows)["predictions"] for m in members]
        for i, prediction in enumerate(got):
            for label, p in prediction["probabilities"].items():
                mean = sum(a[i]["probabilities"][label] for a in answers) / len(answers)
                assert p == pytest.approx(mean, abs=1e-6)
            assert [m["model"] for m in prediction["members"]] == list(MEMBERS)
    finally:
        registry.close()

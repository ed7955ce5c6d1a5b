"""``medserve train`` on a trajectory spec (one with ``series:``) trains and registers a model
whose signature carries its series."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.faces.cli import app

SPEC = Path(__file__).parents[3] / "examples" / "icu_trajectory_spec.yaml"


def test_train_a_trajectory_spec(home: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(SPEC), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{") :])
    assert payload["model"] == "icu-deterioration-example"
    assert "by patient and by time" in payload["training"]["split"]["method"]
    registry = Registry.open(Settings(home=home))
    try:
        version = registry.store.get_version("icu-deterioration-example", 1)
    finally:
        registry.close()
    assert [s["name"] for s in version.signature["series"]] == ["heart_rate", "lactate"]
    assert len(version.signature["series_features"]) == 9


def test_train_a_time_varying_spec(home: Path) -> None:
    spec = SPEC.parent / "stanford_time_varying_spec.yaml"
    result = CliRunner().invoke(app, ["train", str(spec)])
    assert result.exit_code == 0, result.output
    assert "landmark evaluation" in result.output
    assert "registered stanford-heart-tv-cox v1" in result.output
    registry = Registry.open(Settings(home=home))
    try:
        from medserve.core.store.governance import GovernanceStore

        stored = GovernanceStore(registry.store).evaluations("stanford-heart-tv-cox", 1)
    finally:
        registry.close()
    assert stored[0]["kind"] == "landmark"


def test_time_varying_spec_reads_a_long_format_csv(home: Path, tmp_path: Path) -> None:
    from lifelines.datasets import load_stanford_heart_transplants

    data = load_stanford_heart_transplants().rename(columns={"id": "patient", "stop": "end"})
    data.to_csv(tmp_path / "long.csv", index=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: tv-csv\ndata: long.csv\n"
        "time_varying: {id: patient, stop: end, covariates: [age, transplant], landmarks: [30]}\n"
    )
    result = CliRunner().invoke(app, ["train", str(spec), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{") :])
    assert payload["evaluation"]["landmarks"][0]["at_risk"] == 79
    assert set(payload["training"]["algorithm"]["coefficients"]) == {"age", "transplant"}

"""Training pipeline: grouped split, survival, and `medserve train` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medserve.core.registry.service import Registry
from medserve.core.store.governance import GovernanceStore
from medserve.faces.cli import app
from medserve.features.training.pipeline import train
from medserve.features.training.spec import parse_spec
from medserve.features.training.split import cv_folds, patient_split

ROOT = Path(__file__).resolve().parents[3]


def test_grouped_split_never_puts_a_patient_on_both_sides() -> None:
    rng = np.random.default_rng(0)
    patients = rng.integers(0, 150, 900).astype(str)  # ~6 rows per patient
    outcome = rng.integers(0, 2, 900)
    for stratify in (outcome, None):
        split = patient_split(
            patients, test_size=0.2, seed=3, stratify=stratify, grouped_by="patient"
        )
        assert not set(patients[split.train]) & set(patients[split.test])
        assert split.record["patient_overlap"] == 0
        assert split.record["train_rows"] + split.record["test_rows"] == 900
        assert 0.1 < split.record["test_patients"] / 150 < 0.3
        for fit, val in cv_folds(4, patients[split.train], None, 3):
            assert not set(patients[split.train][fit]) & set(patients[split.train][val])


def test_pipeline_keeps_repeat_visits_of_a_patient_together(registry: Registry) -> None:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.data.iloc[:, :5].copy()
    frame["label"] = data.target.to_numpy()
    frame["mrn"] = [f"P{i // 3}" for i in range(len(frame))]  # 3 visits per patient
    spec = parse_spec(
        {
            "name": "grouped",
            "data": "inline",
            "task": "binary",
            "target": "label",
            "patient_id": "mrn",
            "cv_folds": 2,
            "evaluation": {"bootstrap": 20},
        }
    )
    result = train(spec, registry, frame=frame)
    split = result.record["split"]
    assert split["patient_overlap"] == 0
    assert split["grouped_by"] == "mrn"
    assert split["train_patients"] + split["test_patients"] == 190
    assert "P0" not in json.dumps(result.record)  # counts are recorded, identifiers are not
    assert result.version.signature["inputs"][0]["name"] == "mean radius"
    assert "mrn" not in [f["name"] for f in result.version.signature["inputs"]]


def test_survival_spec_trains_and_reports_concordance(registry: Registry) -> None:
    from lifelines.datasets import load_rossi

    spec = parse_spec(
        {
            "name": "rossi",
            "data": "lifelines:rossi",
            "task": "survival",
            "time": "week",
            "event": "arrest",
            "algorithms": ["cox_ph", "survival_forest"],
            "cv_folds": 3,
            "seed": 7,
            "subgroups": ["race"],
            "evaluation": {"bootstrap": 30, "horizons": [26, 39]},
        }
    )
    result = train(spec, registry)
    c = result.evaluation["metrics"]["concordance"]
    assert 0.5 < c["value"] < 0.9
    assert c["ci_low"] <= c["value"] <= c["ci_high"]
    assert {"brier_at_26", "auc_at_26", "brier_at_39"} <= set(result.evaluation["metrics"])
    assert {r["algorithm"] for r in result.record["cv"]["results"]} == {"cox_ph", "survival_forest"}
    # The served model gives the same risk ordering as the evaluated one.
    from medserve.core.loaded_model import load_version_locally

    rossi = load_rossi()
    features = [c for c in rossi.columns if c not in ("week", "arrest", "race")]
    assert "race" not in [f["name"] for f in result.version.signature["inputs"]]  # subgroup only
    served = load_version_locally(registry, result.version)
    out = served.predict_records(rossi[features].head(20).to_dict(orient="records"))
    values = [p["value"] for p in out["predictions"]]
    assert len(set(np.round(values, 6))) > 1


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("train-home")
    spec = (ROOT / "examples" / "breast_cancer_spec.yaml").read_text()
    spec = (
        spec.replace(
            "algorithms: [logistic_regression, random_forest, hist_gradient_boosting]",
            "algorithms: [logistic_regression, svm, mlp]",
        )
        .replace("cv_folds: 5", "cv_folds: 3")
        .replace("bootstrap: 300", "bootstrap: 60")
    )
    folder = tmp_path_factory.mktemp("spec")
    (folder / "spec.yaml").write_text(spec)
    (folder / "breast_cancer_card.yaml").write_text(
        (ROOT / "examples" / "breast_cancer_card.yaml").read_text()
    )
    result = CliRunner().invoke(app, ["--home", str(home), "train", str(folder / "spec.yaml")])
    assert result.exit_code == 0, result.output
    assert "registered breast-cancer-clinic v1" in result.output
    return home


def test_medserve_train_registers_a_version_with_card_and_report(
    trained_home: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    card_file = tmp_path / "card.json"
    shown = runner.invoke(
        app,
        ["--home", str(trained_home), "models", "card", "breast-cancer-clinic@1",
         "--output", "json", "--out", str(card_file)],
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    card = json.loads(card_file.read_text())
    assert card["complete"] is True, card["missing"] + card["problems"]
    assert len(card["hti1_source_attributes"]) == 31
    assert card["hti1_source_attributes"]["validity_test"]["source"] == "derived"
    assert "auroc" in card["hti1_source_attributes"]["validity_test"]["value"]
    assert "SYNTHETIC" in " ".join(card["model_card"]["caveats_and_recommendations"])
    report = tmp_path / "report.html"
    written = runner.invoke(
        app,
        ["--home", str(trained_home), "models", "report", "breast-cancer-clinic@1",
         "--out", str(report)],
    )  # fmt: skip
    assert written.exit_code == 0, written.output
    html = report.read_text()
    for plot in ("roc", "precision-recall", "calibration", "decision-curve", "subgroups"):
        assert f"id='plot-{plot}'" in html
    gate = runner.invoke(
        app, ["--home", str(trained_home), "models", "gate", "breast-cancer-clinic@1"]
    )
    # The synthetic <40 age band of the test split is too small to check 'each_subgroup':
    # it is not assessable, which blocks the gate (it used to be skipped silently).
    assert gate.exit_code == 1, gate.output
    assert "auroc (synthetic_age_band=<40) is not assessable" in " ".join(gate.output.split())
    blocked = runner.invoke(
        app,
        ["--home", str(trained_home), "models", "alias", "breast-cancer-clinic", "production", "1"],
    )
    assert blocked.exit_code != 0
    promoted = runner.invoke(
        app,
        ["--home", str(trained_home), "models", "alias", "breast-cancer-clinic", "production", "1",
         "--override-approver", "Dr Lee", "--reason", "synthetic subgroup, demonstration only"],
    )  # fmt: skip
    assert promoted.exit_code == 0, promoted.output


def test_evaluate_command_stores_a_local_evaluation(trained_home: Path, tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.data.copy()
    frame["diagnosis"] = np.asarray(data.target_names)[data.target]
    frame["site"] = np.where(np.arange(len(frame)) % 10 == 0, "small", "main")
    path = tmp_path / "local.csv"
    frame.to_csv(path, index=False)
    result = CliRunner().invoke(
        app,
        ["--home", str(trained_home), "evaluate", "breast-cancer-clinic@1", "--data", str(path),
         "--label", "diagnosis", "--subgroup", "site", "--min-n", "100", "--bootstrap", "30"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    from medserve.core.settings import Settings

    registry = Registry.open(Settings(home=trained_home))
    try:
        stored = GovernanceStore(registry.store).evaluations("breast-cancer-clinic", 1)
    finally:
        registry.close()
    local = next(e for e in stored if e["kind"] == "local")
    levels = {r["level"]: r for r in local["result"]["subgroups"]["site"]}
    assert levels["small"]["flagged"]
    assert levels["small"]["n"] == 57
    assert not levels["main"]["flagged"]
    assert local["result"]["positive_label"] == "malignant"
    assert local["dataset_sha256"] != stored[-1]["dataset_sha256"] or len(stored) == 1
    assert isinstance(pd.Timestamp(local["created_at"]), pd.Timestamp)

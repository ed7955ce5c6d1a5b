"""The clinical-correctness issue: small survival subgroups, survival evaluation and calibration,
Cox non-convergence, spec errors that name the column, float labels, min_events, the balanced
class-weight calibration warning, and binary labels derived at a horizon."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medserve.core.errors import InvalidRequestError
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.governance import GovernanceStore
from medserve.faces.cli import app
from medserve.features.training.pipeline import train
from medserve.features.training.spec import parse_spec
from medserve.features.training.split import patient_split
from medserve.features.training.survival import CoxModel


def _rossi_with_small_site(test_size: float, seed: int) -> pd.DataFrame:
    """Rossi with a 'site' whose held-out part is 40 patients with 4 events."""
    from lifelines.datasets import load_rossi

    frame = load_rossi()
    split = patient_split(
        np.arange(len(frame)).astype(str),
        test_size=test_size,
        seed=seed,
        stratify=None,
        grouped_by=None,
    )
    test = frame.iloc[split.test]
    small = [*test.index[test["arrest"] == 1][:4], *test.index[test["arrest"] == 0][:36]]
    frame["site"] = "main"
    frame.loc[small, "site"] = "small"
    return frame


def _survival_spec(**extra: Any) -> dict[str, Any]:
    return {
        "name": "rossi-sites",
        "data": "inline",
        "task": "survival",
        "time": "week",
        "event": "arrest",
        "algorithms": ["cox_ph"],
        "cv_folds": 2,
        "test_size": 0.5,
        "seed": 3,
        "subgroups": ["site"],
        "evaluation": {"bootstrap": 300, "min_n": 30, "horizons": [26, 39]},
        **extra,
    }


def _site(result: dict[str, Any], level: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = result["subgroups"]["site"]
    return next(r for r in rows if r["level"] == level)


def test_survival_subgroup_with_4_events_trains_and_is_flagged(registry: Registry) -> None:
    frame = _rossi_with_small_site(0.5, 3)
    result = train(parse_spec(_survival_spec()), registry, frame=frame)
    small = _site(result.evaluation, "small")
    assert (small["n"], small["n_events"]) == (40, 4)
    assert small["flagged"]
    assert small["status"] == "below_min_events"
    assert "4 events is below the minimum of 10" in small["reason"]
    assert "metrics" not in small
    assert not _site(result.evaluation, "main")["flagged"]


def test_bootstrap_resamples_without_comparable_pairs_do_not_abort_training(
    registry: Registry,
) -> None:
    """min_events 0 forces the 4-event subgroup through the bootstrap: some resamples have no
    event at all (lifelines raised ZeroDivisionError, 'No admissable pairs')."""
    frame = _rossi_with_small_site(0.5, 3)
    spec = _survival_spec(evaluation={"bootstrap": 300, "min_n": 30, "min_events": 0})
    result = train(parse_spec(spec), registry, frame=frame)
    small = _site(result.evaluation, "small")
    assert small["status"] in ("reported", "not_estimable")
    if small["status"] == "reported":
        c = small["metrics"]["concordance"]
        assert c["ci_low"] <= c["value"] <= c["ci_high"]


def test_a_subgroup_without_any_comparable_pair_is_not_estimable() -> None:
    from medserve.core.evaluation.evaluate import Predictions, evaluate

    rng = np.random.default_rng(0)
    time = rng.uniform(1, 50, 120)
    event = (rng.uniform(size=120) < 0.5).astype(int)
    group = np.where(np.arange(120) < 40, "none", "main")
    event[:40] = 0  # no event in the subgroup: no pair is comparable
    pred = Predictions("survival", time, -time + rng.normal(0, 5, 120), event=event)
    result = evaluate(pred, subgroups={"g": group}, n_boot=50, min_n=30, min_events=0)
    none = next(r for r in result["subgroups"]["g"] if r["level"] == "none")
    assert none["flagged"]
    assert none["status"] == "not_estimable"


@pytest.fixture(scope="module")
def survival_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """`medserve train` on a survival spec, and the data as a CSV for `medserve evaluate`."""
    from lifelines.datasets import load_rossi

    home = tmp_path_factory.mktemp("survival-home")
    folder = tmp_path_factory.mktemp("survival-spec")
    rossi = load_rossi()
    rossi.to_csv(folder / "rossi.csv", index=False)
    # "Local" data: other rows than the training file (the same file would have the training
    # data's fingerprint, and replace the stored test evaluation).
    rossi.iloc[100:].to_csv(folder / "local.csv", index=False)
    spec = {
        "name": "rossi",
        "data": "rossi.csv",
        "task": "survival",
        "time": "week",
        "event": "arrest",
        "algorithms": ["cox_ph"],
        "cv_folds": 2,
        "seed": 1,
        "evaluation": {"bootstrap": 30, "horizons": [26, 52]},
    }
    (folder / "spec.yaml").write_text(json.dumps(spec))
    result = CliRunner().invoke(app, ["--home", str(home), "train", str(folder / "spec.yaml")])
    assert result.exit_code == 0, result.output
    return home, folder / "local.csv"


def test_medserve_evaluate_on_a_survival_model_stores_concordance(
    survival_home: tuple[Path, Path], tmp_path: Path
) -> None:
    home, data = survival_home
    report = tmp_path / "local.html"
    result = CliRunner().invoke(
        app,
        ["--home", str(home), "evaluate", "rossi@1", "--data", str(data), "--bootstrap", "30",
         "--report", str(report)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    registry = Registry.open(Settings(home=home))
    try:
        stored = GovernanceStore(registry.store).evaluations("rossi", 1)
        version = registry.store.get_version("rossi", 1)
    finally:
        registry.close()
    local = next(e for e in stored if e["kind"] == "local")["result"]
    assert local["task"] == "survival"
    assert 0.55 < local["metrics"]["concordance"]["value"] < 0.8
    assert {"auc_at_26", "brier_at_26", "oe_at_52"} <= set(local["metrics"])
    assert not {"mae", "r2", "rmse"} & set(local["metrics"])
    assert "id='plot-survival-calibration'" in report.read_text()
    # The signature says what the served number is; the served output stays a value.
    assert version.signature["task"] == "survival"
    assert version.signature["outputs"] == [
        {"name": "value", "datatype": "FP32", "shape": [-1], "description": ""}
    ]


def test_survival_calibration_is_on_the_card(survival_home: tuple[Path, Path]) -> None:
    home, _ = survival_home
    shown = CliRunner().invoke(
        app, ["--home", str(home), "models", "card", "rossi@1", "--output", "json"]
    )
    assert shown.exit_code == 0, shown.output
    card = json.loads(shown.output)
    tables = card["model_card"]["quantitative_analyses"]["survival_calibration"]
    by_26 = tables["test"]["by_horizon"]["26"]
    assert len(by_26) == 5  # quintiles: fewer than 100 events in the test split
    assert all(0 <= row["predicted"] <= 1 and 0 <= row["observed"] <= 1 for row in by_26)
    test = next(e for e in card["model_card"]["evaluation_data"] if e["kind"] == "test")
    assert sum(row["n"] for row in by_26) == test["n"]
    validity = card["hti1_source_attributes"]["validity_test"]["value"]
    assert "survival calibration" in validity
    assert "observed = Kaplan-Meier risk" in validity


def test_cox_non_convergence_is_retried_with_a_stronger_penalty() -> None:
    from lifelines.datasets import load_rossi

    rossi = load_rossi()
    X = rossi.drop(columns=["week", "arrest"])
    X["separates"] = rossi["arrest"].astype(float)  # complete separation
    time, event = rossi["week"].to_numpy(float), rossi["arrest"].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing leaks out as a warning
        model = CoxModel(0, penalizers=(0.0, 0.01)).fit(X, time, event)
    assert model.penalizer == 0.01
    assert model.convergence
    assert "penalizer 0: Newton-Raphson" in model.convergence[0]
    assert "after non-convergence" in model.description()


def test_cox_failing_in_a_cv_fold_is_recorded_and_not_selected(registry: Registry) -> None:
    from lifelines.datasets import load_rossi

    frame = load_rossi()
    frame["rare"] = 0.0
    frame.loc[0, "rare"] = 1.0  # constant in every fold without row 0: Cox cannot fit there
    spec = {**_survival_spec(), "algorithms": ["cox_ph", "survival_forest"], "subgroups": []}
    spec["evaluation"] = {"bootstrap": 20}
    result = train(parse_spec(spec), registry, frame=frame)
    cox = next(r for r in result.record["cv"]["results"] if r["algorithm"] == "cox_ph")
    assert cox["failed_folds"] == 1
    assert None in cox["folds"]
    outcomes = [c["outcome"] for c in result.record["convergence"]["cox_ph"]]
    assert "failed" in outcomes  # the folds without row 0
    assert "converged with penalizer 0.1" in outcomes  # the fold with it: near-separation
    assert result.record["cv"]["selected"] == "survival_forest"
    assert any("cox_ph did not converge" in w for w in result.record["warnings"])


def test_a_text_column_not_declared_is_a_spec_error_naming_it(registry: Registry) -> None:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.data.iloc[:, :4].copy()
    frame["label"] = data.target.to_numpy()
    frame["ward"] = np.where(np.arange(len(frame)) % 2 == 0, "A", "B")
    spec = parse_spec({"name": "t", "data": "inline", "task": "binary", "target": "label"})
    with pytest.raises(InvalidRequestError) as info:
        train(spec, registry, frame=frame)
    assert "'ward'" in info.value.message
    assert "features.categorical" in info.value.message
    assert info.value.details[0]["column"] == "ward"
    declared = parse_spec(
        {"name": "t", "data": "inline", "task": "binary", "target": "label",
         "features": {"categorical": ["ward"]}, "cv_folds": 2, "evaluation": {"bootstrap": 0}}
    )  # fmt: skip
    inputs = train(declared, registry, frame=frame).version.signature["inputs"]
    assert "ward" in [f["name"] for f in inputs]


def _diabetes_high() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True, scaled=False)
    frame = data.data.copy()
    frame["high"] = (data.target > 250).astype(float)  # a float label column: 0.0 / 1.0
    return frame


def test_positive_label_1_matches_a_float_label_column(registry: Registry) -> None:
    spec = parse_spec(
        {"name": "f", "data": "inline", "task": "binary", "target": "high", "positive_label": 1,
         "cv_folds": 2, "evaluation": {"bootstrap": 0}}
    )  # fmt: skip
    result = train(spec, registry, frame=_diabetes_high())
    assert result.record["outcome"]["positive_label"] == "1.0"
    assert result.evaluation["positive_label"] == "1.0"
    assert 0 < result.evaluation["n_positive"] < result.evaluation["n"]


@pytest.mark.parametrize(("class_weight", "warned"), [("balanced", True), ("none", False)])
def test_balanced_class_weight_warns_when_it_degrades_calibration(
    registry: Registry, class_weight: str, warned: bool
) -> None:
    spec = parse_spec(
        {"name": f"cw-{class_weight}", "data": "inline", "task": "binary", "target": "high",
         "positive_label": 1, "class_weight": class_weight, "cv_folds": 2,
         "evaluation": {"bootstrap": 100}}
    )  # fmt: skip
    result = train(spec, registry, frame=_diabetes_high())
    intercept = result.evaluation["metrics"]["calibration_intercept"]
    warning = [w for w in result.record["warnings"] if w.startswith("class_weight: balanced")]
    assert bool(warning) is warned
    if warned:
        assert intercept["ci_high"] < 0  # risks overestimated
        assert "excludes 0" in warning[0]
        from medserve.features.governance.cards import build_card

        card = build_card(GovernanceStore(registry.store), result.version)
        assert warning[0] in card["warnings"]
        assert warning[0] in card["model_card"]["caveats_and_recommendations"]


def test_a_horizon_spec_derives_its_label_and_the_card_states_the_exclusions(
    tmp_path: Path,
) -> None:
    from lifelines.datasets import load_gbsg2

    gbsg2 = load_gbsg2()
    gbsg2.to_csv(tmp_path / "gbsg2.csv", index=False)
    gbsg2.iloc[200:].to_csv(tmp_path / "local.csv", index=False)
    spec = {
        "name": "gbsg2-1y",
        "data": "gbsg2.csv",
        "task": "binary",
        "horizon": 365,
        "time": "time",
        "event": "cens",
        "features": {"categorical": ["horTh", "menostat", "tgrade"]},
        "subgroups": ["menostat"],  # evaluated by, and also an input (declared above)
        "cv_folds": 2,
        "evaluation": {"bootstrap": 20, "min_events": 2},
    }
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    home = tmp_path / "home"
    runner = CliRunner()
    trained = runner.invoke(app, ["--home", str(home), "train", str(tmp_path / "spec.yaml")])
    assert trained.exit_code == 0, trained.output
    output = " ".join(trained.output.split())
    assert "28 of 686 patients excluded (censored before 365" in output
    shown = runner.invoke(
        app, ["--home", str(home), "models", "card", "gbsg2-1y@1", "--output", "json"]
    )
    assert shown.exit_code == 0, shown.output
    card = json.loads(shown.output)
    exclusions = card["model_card"]["training_data"]["exclusions"]
    assert exclusions.startswith("28 of 686 patients were excluded: censored before the horizon")
    assert exclusions in card["model_card"]["caveats_and_recommendations"]
    record = card["training_record"]
    assert record["data"]["rows_used"] == 686 - 28
    assert record["outcome"]["positive_label"] == "1"
    assert record["outcome"]["label"] == "cens_by_365"
    assert set(record["threshold"]) == {"value", "method"}
    registry = Registry.open(Settings(home=home))
    try:
        signature = registry.store.get_version("gbsg2-1y", 1).signature
    finally:
        registry.close()
    inputs = [f["name"] for f in signature["inputs"]]
    assert "menostat" in inputs
    assert not {"time", "cens", "cens_by_365"} & set(inputs)
    assert record["data"]["subgroups_also_inputs"] == ["menostat"]
    # `medserve evaluate` derives the label by the same rule from the time and event columns.
    local = runner.invoke(
        app,
        ["--home", str(home), "evaluate", "gbsg2-1y@1", "--data", str(tmp_path / "local.csv"),
         "--bootstrap", "10"],
    )  # fmt: skip
    assert local.exit_code == 0, local.output
    registry = Registry.open(Settings(home=home))
    try:
        stored = GovernanceStore(registry.store).evaluations("gbsg2-1y", 1)
    finally:
        registry.close()
    evaluated = next(e for e in stored if e["kind"] == "local")["result"]
    assert evaluated["task"] == "binary"
    assert evaluated["positive_label"] == "1"
    excluded = int(((gbsg2["cens"] == 0) & (gbsg2["time"] < 365)).iloc[200:].sum())
    assert evaluated["dataset"]["excluded_censored_before_horizon"] == excluded
    assert evaluated["n"] == len(gbsg2) - 200 - excluded


def test_a_subgroup_column_can_also_be_a_numeric_input(registry: Registry) -> None:
    frame = _diabetes_high()
    base = {"name": "both", "data": "inline", "task": "binary", "target": "high",
            "positive_label": 1, "subgroups": ["sex"], "cv_folds": 2,
            "evaluation": {"bootstrap": 0}}  # fmt: skip
    only_subgroup = train(parse_spec(base), registry, frame=frame)
    assert "sex" not in [f["name"] for f in only_subgroup.version.signature["inputs"]]
    both = train(parse_spec({**base, "features": {"include": ["sex"]}}), registry, frame=frame)
    assert "sex" in [f["name"] for f in both.version.signature["inputs"]]
    assert "sex" in both.evaluation["subgroups"]

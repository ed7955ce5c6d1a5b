"""Time-varying Cox on the Stanford heart transplant data, evaluated by landmarking: the
landmark sets, the stored metrics, the served score and the card's statement of the method."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from lifelines.datasets import load_stanford_heart_transplants

from medserve.core.evaluation.landmark import at_landmark, landmark_metrics
from medserve.core.loaded_model import load_version_locally
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.governance import GovernanceStore
from medserve.features.governance.cards import build_card
from medserve.features.training.time_varying import METHOD, TimeVaryingResult, train_time_varying


def test_landmark_set_uses_the_covariates_known_at_s() -> None:
    # patient 1: transplant at day 10, event at 40; 2: censored at 20; 3: event at 5;
    # 4: enters follow-up at day 50 (late entry, not observed at s = 30)
    ids = np.array([1, 1, 2, 3, 4])
    start = np.array([0.0, 10.0, 0.0, 0.0, 50.0])
    stop = np.array([10.0, 40.0, 20.0, 5.0, 90.0])
    event = np.array([0, 1, 0, 1, 0])
    lm = at_landmark(ids, start, stop, event, 15.0)
    assert lm.patients.tolist() == [1, 2]
    assert lm.rows.tolist() == [1, 2]  # patient 1's transplanted interval covers day 15
    assert lm.residual.tolist() == [25.0, 5.0]
    assert lm.event.tolist() == [1, 0]
    later = at_landmark(ids, start, stop, event, 30.0)
    assert later.patients.tolist() == [1]


def test_landmark_metrics_count_events_in_the_window_only() -> None:
    ids = np.arange(6)
    lm = at_landmark(
        ids,
        np.zeros(6),
        np.array([40.0, 60.0, 200.0, 300.0, 80.0, 500.0]),
        np.array([1, 1, 1, 0, 0, 1]),
        30.0,
    )
    risk = np.array([3.0, 2.0, 1.0, 0.0, 0.5, -1.0])
    metrics = landmark_metrics(lm, risk, np.full(6, 0.5), horizon=100.0)
    # residuals 10, 30, 170, 270, 50, 470: events by s + 100 are the first two
    assert metrics["events_in_window"] == 2
    assert metrics["at_risk"] == 6
    assert metrics["concordance"] == pytest.approx(1.0)
    assert metrics["auc"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TimeVaryingResult]:
    home = tmp_path_factory.mktemp("tv-cox")
    registry = Registry.open(Settings(home=home))
    try:
        return home, train_time_varying(registry, created_by="test")
    finally:
        registry.close()


def test_stanford_landmark_metrics_are_stored(
    trained: tuple[Path, TimeVaryingResult],
) -> None:
    home, result = trained
    data = load_stanford_heart_transplants()
    registry = Registry.open(Settings(home=home))
    try:
        gov = GovernanceStore(registry.store)
        stored = gov.evaluations(result.version.model_name, result.version.version)
        card = build_card(gov, result.version)
    finally:
        registry.close()
    assert [e["kind"] for e in stored] == ["landmark"]
    landmarks = stored[0]["result"]["landmarks"]
    assert [e["landmark"] for e in landmarks] == [30.0, 90.0, 180.0]
    assert stored[0]["result"]["n"] == data["id"].nunique() == 103
    for entry in landmarks:
        # at risk: follow-up past s, observed at s (the whole data set, pooled over the folds)
        ends = data.groupby("id").agg(first=("start", "min"), end=("stop", "max"))
        expected = int(
            ((ends["end"] > entry["landmark"]) & (ends["first"] <= entry["landmark"])).sum()
        )
        assert entry["at_risk"] == expected
        assert entry["events_in_window"] > 0
        for metric in ("concordance", "auc", "brier"):
            assert entry[metric] is not None
            assert 0.0 <= entry[metric] <= 1.0
    assert card["author_statements"]["evaluation_method"] == METHOD
    assert "landmarking" in card["training_record"]["evaluation_method"]


def test_served_score_is_lifelines_log_partial_hazard(
    trained: tuple[Path, TimeVaryingResult],
) -> None:
    from lifelines import CoxTimeVaryingFitter

    home, result = trained
    data = load_stanford_heart_transplants()
    covariates = ["age", "year", "surgery", "transplant"]
    fitter = CoxTimeVaryingFitter(penalizer=0.01).fit(
        data, id_col="id", event_col="event", start_col="start", stop_col="stop"
    )
    registry = Registry.open(Settings(home=home))
    try:
        model = load_version_locally(registry, result.version)
    finally:
        registry.close()
    assert result.version.flavor == "onnx"
    rows = data[covariates].iloc[:20].astype(float)
    served = model.predict_records(rows.to_dict("records"))["predictions"]
    expected = np.asarray(fitter.predict_log_partial_hazard(rows), dtype=float)
    np.testing.assert_allclose([p["value"] for p in served], expected, atol=1e-4)
    assert model.signature.task == "survival"
    assert not math.isnan(result.record["algorithm"]["coefficients"]["transplant"])

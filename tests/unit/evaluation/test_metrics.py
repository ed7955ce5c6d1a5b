"""Metrics against scikit-learn and lifelines reference values; bootstrap CIs; subgroups."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medserve.core.evaluation import metrics as m
from medserve.core.evaluation import survival_metrics as sm
from medserve.core.evaluation.evaluate import Predictions, evaluate


@pytest.fixture(scope="module")
def risk() -> tuple[np.ndarray, np.ndarray]:
    """Out-of-sample risks of a real model on real data (not a toy)."""
    X, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05)).fit(X[::2], y[::2])
    return y[1::2].astype(float), model.predict_proba(X[1::2])[:, 1]


def test_discrimination_and_threshold_metrics_match_sklearn(
    risk: tuple[np.ndarray, np.ndarray],
) -> None:
    y, p = risk
    got = m.binary_metrics(y, p, 0.4)
    pred = (p >= 0.4).astype(int)
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert got["auprc"] == pytest.approx(skm.average_precision_score(y, p))
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert got["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert got["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert got["ppv"] == pytest.approx(skm.precision_score(y, pred))
    assert got["npv"] == pytest.approx(skm.precision_score(y, pred, pos_label=0))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert got["oe_ratio"] == pytest.approx(y.sum() / p.sum())


def test_calibration_slope_and_intercept_match_unpenalised_logistic_fits(
    risk: tuple[np.ndarray, np.ndarray],
) -> None:
    y, p = risk
    lp = np.log(np.clip(p, 1e-9, 1 - 1e-9) / (1 - np.clip(p, 1e-9, 1 - 1e-9)))
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(lp[:, None], y)
    assert m.calibration_slope(y, p) == pytest.approx(ref.coef_[0][0], rel=1e-3)
    # A perfectly calibrated risk has intercept 0 and slope 1 on data drawn from it.
    rng = np.random.default_rng(1)
    true_p = rng.uniform(0.05, 0.95, 20000)
    outcome = (rng.uniform(size=true_p.size) < true_p).astype(float)
    assert m.calibration_intercept(outcome, true_p) == pytest.approx(0.0, abs=0.05)
    assert m.calibration_slope(outcome, true_p) == pytest.approx(1.0, abs=0.06)
    # Risks that are systematically too high give a negative intercept.
    assert m.calibration_intercept(outcome, np.clip(true_p * 1.3, 0, 0.99)) < -0.2


def test_net_benefit_matches_its_definition(risk: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = risk
    t = 0.2
    tp = np.sum((p >= t) & (y == 1))
    fp = np.sum((p >= t) & (y == 0))
    assert m.net_benefit(y, p, t) == pytest.approx(tp / len(y) - fp / len(y) * t / (1 - t))
    assert m.treat_all_net_benefit(y, t) == pytest.approx(y.mean() - (1 - y.mean()) * 0.25)


def test_regression_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(100, 20, 300)
    pred = y + rng.normal(0, 10, 300)
    got = m.regression_metrics(y, pred)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)))
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred))


def test_survival_metrics_match_references() -> None:
    from lifelines import CoxPHFitter
    from lifelines.datasets import load_rossi
    from lifelines.utils import concordance_index

    rossi = load_rossi()
    cph = CoxPHFitter().fit(rossi, "week", "arrest")
    risk = cph.predict_partial_hazard(rossi).to_numpy()
    time, event = rossi["week"].to_numpy(float), rossi["arrest"].to_numpy()
    assert sm.concordance(time, event, risk) == pytest.approx(cph.concordance_index_)
    assert sm.concordance(time, event, risk) == pytest.approx(concordance_index(time, -risk, event))
    # Without censoring the IPCW Brier score and AUC are the plain ones of "event by horizon".
    rng = np.random.default_rng(5)
    t = rng.exponential(10, 400)
    surv = np.exp(-8 / (1 + rng.uniform(size=400) * 10))
    all_events = np.ones(400, dtype=int)
    by_h = (t <= 8).astype(int)
    assert sm.brier_at(t, all_events, surv, 8.0) == pytest.approx(
        skm.brier_score_loss(by_h, 1 - surv)
    )
    score = -t + rng.normal(0, 3, 400)
    assert sm.auc_at(t, all_events, score, 8.0) == pytest.approx(skm.roc_auc_score(by_h, score))
    # With censoring the weights change the answer but it stays a probability.
    censored = (rng.uniform(size=400) < 0.3).astype(int)
    assert 0.5 < sm.auc_at(t, 1 - censored, score, 8.0) <= 1.0


def _binary_predictions(n: int, seed: int) -> Predictions:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    y = (rng.uniform(size=n) < p).astype(float)
    return Predictions(task="binary", y=y, score=p, positive_label="event")


def test_bootstrap_ci_contains_point_estimate_and_narrows_with_more_data() -> None:
    small = evaluate(_binary_predictions(150, 1), n_boot=150, seed=7)
    large = evaluate(_binary_predictions(1500, 1), n_boot=150, seed=7)
    for result in (small, large):
        for name in ("auroc", "brier", "calibration_slope", "sensitivity", "oe_ratio"):
            entry = result["metrics"][name]
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
    for name in ("auroc", "brier", "sensitivity"):
        width_small = small["metrics"][name]["ci_high"] - small["metrics"][name]["ci_low"]
        width_large = large["metrics"][name]["ci_high"] - large["metrics"][name]["ci_low"]
        assert width_large < width_small / 2, name


def test_subgroup_below_min_n_is_flagged_not_reported() -> None:
    pred = _binary_predictions(400, 2)
    sex = np.array(["female"] * 200 + ["male"] * 190 + ["unknown"] * 10)
    result = evaluate(pred, subgroups={"sex": sex}, min_n=30, n_boot=50)
    levels = {row["level"]: row for row in result["subgroups"]["sex"]}
    assert levels["unknown"]["flagged"] is True
    assert levels["unknown"]["n"] == 10
    assert "metrics" not in levels["unknown"]
    assert levels["female"]["flagged"] is False
    expected = skm.roc_auc_score(pred.y[:200], pred.score[:200])
    assert levels["female"]["metrics"]["auroc"]["value"] == pytest.approx(expected, abs=1e-6)
    assert result["decision_curve"][0]["threshold"] == 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_auroc_and_auprc_equal_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=300) < 0.3).astype(float)
    p = np.round(rng.uniform(size=300) * 0.5 + y * 0.3, 1)  # heavy ties
    assert m.auroc(y, p) == pytest.approx(skm.roc_auc_score(y, p))
    assert m.auprc(y, p) == pytest.approx(skm.average_precision_score(y, p))

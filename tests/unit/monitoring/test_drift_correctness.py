"""Drift statistics computed as the window actually is: float32 values as the model got them,
KS with point masses, chi-squared with the right degrees of freedom, missing values as they
arrived, and no verdict on a window too small for one."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from scipy import stats

from medserve.core.charts import ALERT
from medserve.core.context import RequestContext, new_request_id
from medserve.core.events import PredictionEvent
from medserve.core.monitoring_config import ModelMonitoringConfig, MonitoringSettings
from medserve.core.prediction_log import PredictionLog
from medserve.core.registry.signature import FeatureSpec, Signature, imputed_counts
from medserve.core.store.monitoring import MonitoringStore
from medserve.core.store.sql import SqlRegistryStore
from medserve.features.monitoring.drift import (
    INSUFFICIENT,
    CategoricalSketch,
    NumericSketch,
    WindowDrift,
)
from medserve.features.monitoring.reference import build_reference, summarize_numeric
from medserve.features.monitoring.report import drift_table, html_report

CFG = ModelMonitoringConfig()
SALT = b"s" * 32
WIDE = (datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(hours=1))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlRegistryStore]:
    opened = SqlRegistryStore(f"sqlite:///{tmp_path / 'registry.db'}")
    yield opened
    opened.close()


def _lab_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """A lab value recorded to 0.1 (many values repeat; deciles fall on them)."""
    return np.round(rng.normal(1.3, 0.15, n), 1)


def _logged_window(
    store: SqlRegistryStore, signature: Signature, rows: list[dict[str, object]]
) -> WindowDrift:
    """Log ``rows`` through the validator and the prediction log, then fold the stored window
    into drift summaries against a reference built the way registration builds it."""
    validator = signature.validator()
    log = PredictionLog(
        store.engine, MonitoringSettings(), salt=SALT, signature_of=lambda m, v: signature
    )
    for start in range(0, len(rows), 50):
        X = validator.records_to_matrix(rows[start : start + 50])
        outputs = {"value": np.zeros(len(X), dtype=np.float32)}
        context = RequestContext(request_id=new_request_id(), id_time_us=None)
        log.on_prediction(
            PredictionEvent(context, "lab", 1, signature.feature_names, X, outputs, 0)
        )
    log.close()
    return _fold(store, signature)


def _fold(store: SqlRegistryStore, signature: Signature) -> WindowDrift:
    reference, _ = MonitoringStore(store.engine).reference("lab", 1)
    drift = WindowDrift(reference, signature.feature_names, [])
    for batch in MonitoringStore(store.engine).window_batches("lab", *WIDE):
        missing = np.zeros(len(signature.inputs), dtype=np.int64)
        for _, feature, count in batch.missing:
            missing[feature] += count
        drift.add(batch.inputs, {}, missing)
    return drift


def _put_reference(
    store: SqlRegistryStore, signature: Signature, sample: list[dict[str, object]]
) -> None:
    X = signature.validator().records_to_matrix(sample)
    reference = build_reference(signature, X, None, None, imputed_counts(X))
    MonitoringStore(store.engine).put_reference("lab", 1, reference, None, datetime.now(UTC))


def test_a_lab_value_to_one_decimal_without_drift_scores_no_drift(
    store: SqlRegistryStore,
) -> None:
    signature = Signature(inputs=[FeatureSpec(name="creatinine", type="float")])
    rng = np.random.default_rng(7)
    _put_reference(store, signature, [{"creatinine": v} for v in _lab_values(rng, 2000)])
    window = _logged_window(store, signature, [{"creatinine": v} for v in _lab_values(rng, 3000)])
    found = window.result(CFG)["features"]["creatinine"]
    # Read back as decimal text, 1.3 (float32 1.2999999523) sat below an edge the reference
    # put at its float32 value: PSI 1.7 ("alert") for the same distribution.
    assert found["psi"] < 0.02
    assert found["status"] == "ok"
    assert found["out_of_range_rate"] < 0.01
    assert found["ks_pvalue"] > 0.01


def test_ks_with_repeated_values_is_scipys_two_sample_test() -> None:
    rng = np.random.default_rng(3)
    reference = (rng.random(1000) < 0.3).astype(np.float32)
    window = (rng.random(4000) < 0.3).astype(np.float32)
    expected = stats.ks_2samp(reference, window, method="asymp")
    summary = summarize_numeric(reference)
    sketch = NumericSketch(summary)
    sketch.add(window)
    found = sketch.result(CFG, True)
    assert found["ks_statistic"] == pytest.approx(expected.statistic, abs=1e-12)
    assert found["ks_pvalue"] == pytest.approx(expected.pvalue, abs=1e-9)
    assert found["ks_drift"] is False
    # A reference stored before its levels were kept: within the stated quantile resolution.
    del summary["levels"]
    sketch = NumericSketch(summary)
    sketch.add(window)
    found = sketch.result(CFG, True)
    assert abs(found["ks_statistic"] - expected.statistic) <= 0.01 + found["ks_statistic_error"]
    assert found["ks_pvalue"] > 0.01


def test_ks_of_a_continuous_feature_is_within_its_stated_error_of_scipys() -> None:
    rng = np.random.default_rng(4)
    reference = rng.normal(0, 1, 3000).astype(np.float32)
    for shift in (0.0, 0.1, 0.5):
        window = rng.normal(shift, 1, 20_000).astype(np.float32)
        sketch = NumericSketch(summarize_numeric(reference))
        for part in np.array_split(window, 7):  # folded page by page: counts add
            sketch.add(part)
        found = sketch.result(CFG, True)
        expected = stats.ks_2samp(reference, window).statistic
        assert found["ks_statistic_error"] <= 1.01 / 1600  # grid points rounded to float32
        assert abs(found["ks_statistic"] - expected) <= 0.01 + found["ks_statistic_error"]


def test_chi_squared_has_one_degree_of_freedom_per_reference_category_less_one() -> None:
    summary = {
        "kind": "categorical",
        "n": 1000,
        "missing_rate": 0.0,
        "frequencies": {"a": 0.5, "b": 0.3, "c": 0.2},
    }
    sketch = CategoricalSketch(summary)
    sketch.add(["a"] * 40 + ["b"] * 41 + ["c"] * 19)
    found = sketch.result(CFG, True)
    expected = stats.chisquare([40, 41, 19], [50, 30, 20])
    assert found["chi2"] == pytest.approx(expected.statistic)
    assert found["chi2_pvalue"] == pytest.approx(expected.pvalue)  # 2 degrees of freedom
    assert found["chi2_pvalue"] < 0.05  # with a bin for unseen values: 0.11
    assert found["unseen"] == 0
    # An unseen value is reported as such (its rate), not as a chi-squared bin.
    sketch.add(["z"] * 5)
    found = sketch.result(CFG, True)
    assert found["unseen"] == 5
    assert found["out_of_range_rate"] == pytest.approx(5 / 105)
    assert found["chi2_pvalue"] == pytest.approx(expected.pvalue)


def test_missing_values_are_counted_as_they_arrived_not_as_imputed(
    store: SqlRegistryStore,
) -> None:
    signature = Signature(
        inputs=[
            FeatureSpec(name="age", type="float"),
            FeatureSpec(name="lactate", type="float", missing="impute", impute_value=1.1),
        ]
    )
    rng = np.random.default_rng(5)

    def rows(n: int, missing_rate: float) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for _ in range(n):
            row: dict[str, object] = {"age": float(rng.integers(20, 90))}
            if rng.random() >= missing_rate:
                row["lactate"] = float(np.round(rng.normal(1.5, 0.4), 1))
            elif rng.random() < 0.5:
                row["lactate"] = None  # sent as null rather than left out
            out.append(row)
        return out

    _put_reference(store, signature, rows(1000, 0.05))
    reference, _ = MonitoringStore(store.engine).reference("lab", 1)
    assert 0.03 < reference["features"]["lactate"]["missing_rate"] < 0.07
    window = _logged_window(store, signature, rows(1000, 0.4)).result(CFG)
    lactate = window["features"]["lactate"]
    assert 0.35 < lactate["missing_rate"] < 0.45  # the validator imputed every one of them
    assert lactate["missing_drift"] is True
    assert window["features"]["age"]["missing_rate"] == 0.0
    assert window["summary"]["features_missing_drift"] == ["lactate"]
    raw = MonitoringStore(store.engine)
    with raw.engine.connect() as conn:
        cells = conn.execute(sa.text("SELECT missing FROM mon_prediction_batches")).scalars()
        assert all(c is None or "[" in c for c in cells)


def test_a_window_below_min_window_n_gets_no_verdict_anywhere() -> None:
    rng = np.random.default_rng(6)
    summary = summarize_numeric(rng.normal(0, 1, 500).astype(np.float32))
    reference = {"n": 500, "features": {"x": summary}, "predictions": {"value": summary}}
    drift = WindowDrift(reference, ["x"], ["value"])
    far = rng.normal(5, 1, (5, 1)).astype(np.float32)  # 5 predictions, far off
    drift.add(far, {"value": far[:, 0]}, None)
    result = drift.result(CFG)
    assert result["enough_data"] is False
    assert result["summary"]["status"] == INSUFFICIENT
    assert result["features"]["x"]["status"] == INSUFFICIENT
    assert result["predictions"]["value"]["status"] == INSUFFICIENT
    assert result["summary"]["features_alert"] == []
    assert result["features"]["x"]["psi"] > 1  # the figure is still shown
    run = {"model": "m", "window": {"n": 5, "start": "s", "end": "e"}, "drift": result}
    run["performance"] = {"overall": {"n": 0}, "matured_window": {"n_labelled": 0}}
    table = drift_table(run)
    statuses = [str(cell) for cell in table.columns[2]._cells]
    assert statuses
    assert all(INSUFFICIENT in s for s in statuses)
    assert "insufficient data" in str(table.title)
    page = html_report("m", [run], [], CFG.psi_alert)
    assert "insufficient data: 5 predictions, fewer than 30" in page
    assert ALERT not in page  # no alert colour on a window without a verdict

"""A monitoring run's memory does not grow with its window: the log is streamed into
fixed-size summaries (``benchmarks/monitor_scale.py`` measures 250k to 10M predictions)."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta

import numpy as np
from benchmarks.monitor_scale import fill_log, make_templates

from medserve.core.loaded_model import load_version
from medserve.core.monitoring_config import ModelMonitoringConfig
from medserve.core.registry.service import Registry
from medserve.core.store.monitoring import MonitoringStore
from medserve.faces.demo.data import breast_cancer_frame
from medserve.features.monitoring.runner import compute

MODEL = "breast-cancer"


def _peak_bytes(store: MonitoringStore, registry: Registry, now: datetime) -> tuple[int, int]:
    """(predictions in the window, peak bytes Python and numpy allocated during the run)."""
    tracemalloc.start()
    try:
        result = compute(store, registry.store, MODEL, window_s=3600, now=now)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    overall = result["performance"]["overall"]
    assert overall["n"] == result["performance"]["matured_window"]["n_labelled"] > 0
    assert result["drift"]["summary"]["psi_max"] < 0.1
    return int(result["window"]["n"]), peak


def test_200k_predictions_take_no_more_memory_than_50k(bc_registry: Registry) -> None:
    store = MonitoringStore(bc_registry.store)
    store.set_config(MODEL, ModelMonitoringConfig(positive_class="malignant"), "test")
    loaded = load_version(bc_registry.artifacts, bc_registry.store.get_version(MODEL, 1))
    X, _ = breast_cancer_frame()

    def predict(matrix: np.ndarray) -> np.ndarray:
        return np.asarray(loaded.predict(matrix)["probabilities"])

    templates = make_templates(X.to_numpy(dtype=np.float64), predict, loaded.class_keys or [], 2)
    now = datetime.now(UTC)
    fill_log(store.engine, MODEL, 1, 50_000, now, templates)
    small = _peak_bytes(store, bc_registry, now + timedelta(seconds=1))
    fill_log(store.engine, MODEL, 1, 150_000, now, templates)
    large = _peak_bytes(store, bc_registry, now + timedelta(seconds=1))
    assert (small[0], large[0]) == (50_000, 200_000)
    # Holding the window (as the run once did: ~2.7 kB a prediction) would take 4x the memory.
    assert large[1] < 1.25 * small[1] + 2_000_000, (small, large)
    assert large[1] < 80_000_000

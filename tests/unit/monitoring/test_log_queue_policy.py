"""The prediction log's bounded queue: counted in rows, and a declared policy when it is full."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import pytest

from medserve.core import metrics
from medserve.core.context import RequestContext
from medserve.core.events import PredictionEvent
from medserve.core.loaded_model import load_version
from medserve.core.monitoring_config import MonitoringSettings
from medserve.core.prediction_log import PredictionLog
from medserve.core.registry.service import Registry
from medserve.core.store.monitoring import MonitoringStore
from medserve.faces.demo.data import breast_cancer_frame

ROWS, EVENTS, BOUND = 10, 20, 50


def _events(registry: Registry) -> tuple[list[PredictionEvent], Any]:
    loaded = load_version(registry.artifacts, registry.store.get_version("breast-cancer", 1))
    frame = breast_cancer_frame()[0].iloc[:ROWS]
    X = loaded.validator.records_to_matrix(frame.to_dict("records"))
    outputs = loaded.predict(X)
    names = loaded.signature.feature_names
    events = [
        PredictionEvent(
            RequestContext(request_id=f"q{i}"), "breast-cancer", 1, names, X, outputs, 0.0
        )
        for i in range(EVENTS)
    ]
    return events, loaded.signature


def _dropped_metric() -> float:
    return float(metrics.LOG_DROPPED.labels("queue_full")._value.get())


@pytest.mark.parametrize("policy", ["drop", "block"])
def test_full_queue_applies_the_declared_policy_and_counts(
    bc_registry: Registry, policy: str
) -> None:
    events, signature = _events(bc_registry)
    engine = MonitoringStore(bc_registry.store).engine
    log = PredictionLog(
        engine,
        MonitoringSettings(queue_size=BOUND, queue_full=policy, block_ms=40, flush_interval_s=60),
        salt=b"s" * 32,
        signature_of=lambda m, v: signature,
    )
    # Another connection holds SQLite's write lock, so the writer cannot drain: it holds at
    # most what it popped when it woke (half full), and the queue then fills up to its bound.
    holder = sqlite3.connect(str(engine.url.database), timeout=30)
    holder.execute("BEGIN IMMEDIATE")
    before = _dropped_metric()
    started = time.monotonic()
    try:
        for event in events:
            log.on_prediction(event)
        elapsed = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    log.close()
    total = ROWS * EVENTS
    assert log.dropped >= total - 2 * BOUND  # the writer's popped batch + a full queue
    assert log.written + log.dropped == total  # every row written or counted, none silently
    assert _dropped_metric() - before == log.dropped
    if policy == "block":  # each refused event first waited block_ms for room
        assert elapsed >= 0.9 * 0.040 * (log.dropped / ROWS)

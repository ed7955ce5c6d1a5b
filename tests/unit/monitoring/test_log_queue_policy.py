"""The prediction log's bounded queue: counted in rows, and ``audit_failure`` when it is full
(``fail_closed``: the prediction is refused at once, a 503; ``fail_open``: dropped and counted;
neither waits, since ``on_prediction`` runs on the event loop)."""

from __future__ import annotations

import sqlite3
import sys
import threading
from typing import Any

import pytest
from pydantic import ValidationError

from medserve.core import metrics
from medserve.core.context import RequestContext
from medserve.core.events import PredictionEvent
from medserve.core.loaded_model import load_version
from medserve.core.monitoring_config import MonitoringSettings
from medserve.core.prediction_log import PredictionLog, PredictionLogFullError
from medserve.core.registry.service import Registry
from medserve.core.store.monitoring import MonitoringStore
from medserve.faces.demo.data import breast_cancer_frame
from medserve.serving.http_errors import status_for

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


def _held_log(
    registry: Registry, policy: str, signature: Any
) -> tuple[PredictionLog, sqlite3.Connection]:
    """A log whose writer cannot drain: another connection holds SQLite's write lock, so the
    writer holds at most what it popped when it woke (half full) and the queue then fills."""
    engine = MonitoringStore(registry.store).engine
    log = PredictionLog(
        engine,
        MonitoringSettings(queue_size=BOUND, audit_failure=policy, flush_interval_s=60),
        salt=b"s" * 32,
        signature_of=lambda m, v: signature,
    )
    holder = sqlite3.connect(str(engine.url.database), timeout=30)
    holder.execute("BEGIN IMMEDIATE")
    return log, holder


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every wait on a condition or an event that medserve makes on this (the "event loop")
    thread: a full queue must never make the request wait for room. The writer thread may wait
    on its own, and starting it waits for its start-up handshake (inside ``threading``)."""
    made: list[str] = []
    main = threading.current_thread()
    for kind in (threading.Condition, threading.Event):
        original = kind.wait

        def wait(self: Any, timeout: float | None = None, _original: Any = original) -> Any:
            caller = sys._getframe(1).f_code.co_filename
            if threading.current_thread() is main and not caller.endswith("threading.py"):
                made.append(type(self).__name__)
            return _original(self, timeout)

        monkeypatch.setattr(kind, "wait", wait)
    return made


def test_fail_open_drops_and_counts_at_once(bc_registry: Registry, waits: list[str]) -> None:
    events, signature = _events(bc_registry)
    log, holder = _held_log(bc_registry, "fail_open", signature)
    before = _dropped_metric()
    try:
        for event in events:
            log.on_prediction(event)  # never raises in fail_open
        on_the_loop = list(waits)
    finally:
        holder.rollback()
        holder.close()
    log.close()
    total = ROWS * EVENTS
    assert log.dropped >= total - 2 * BOUND  # the writer's popped batch + a full queue
    assert log.written + log.dropped == total  # every row written or counted, none silently
    assert _dropped_metric() - before == log.dropped
    assert log.refused == 0
    assert on_the_loop == []  # nothing waited for room


def test_fail_closed_refuses_with_a_503_at_once_and_drops_nothing(
    bc_registry: Registry, monkeypatch: pytest.MonkeyPatch, waits: list[str]
) -> None:
    monkeypatch.delenv("MEDSERVE_AUDIT_FAILURE", raising=False)
    assert MonitoringSettings().audit_failure == "fail_closed"  # the default
    events, signature = _events(bc_registry)
    log, holder = _held_log(bc_registry, "fail_closed", signature)
    before = _dropped_metric()
    accepted = 0
    errors: list[PredictionLogFullError] = []
    try:
        for event in events:
            try:
                log.on_prediction(event)
            except PredictionLogFullError as exc:
                errors.append(exc)
            else:
                accepted += 1
        on_the_loop = list(waits)
    finally:
        holder.rollback()
        holder.close()
    log.close()
    refused = len(errors)
    assert refused >= EVENTS - 2 * BOUND // ROWS  # the writer's popped batch + a full queue
    assert log.refused == refused * ROWS
    assert {status_for(exc) for exc in errors} == {503}
    assert {exc.code for exc in errors} == {"prediction_log_full"}
    assert all("prediction log is full" in exc.message for exc in errors)
    assert on_the_loop == []  # refused at once: no wait for room on the event loop
    # Everything accepted was written; nothing was dropped (what was refused was never answered).
    assert log.written == accepted * ROWS
    assert log.dropped == 0
    assert _dropped_metric() == before


def test_audit_failure_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSERVE_AUDIT_FAILURE", "fail_open")
    assert MonitoringSettings().audit_failure == "fail_open"
    monkeypatch.setenv("MEDSERVE_AUDIT_FAILURE", "block")
    with pytest.raises(ValidationError, match="fail_closed"):
        MonitoringSettings()

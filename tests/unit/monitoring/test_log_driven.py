"""Driven by the server's event loop, the prediction log and the audit trail do their Python work
there (in slices between requests) and their writer threads only insert; nothing queued is lost
when they close, including what no slice has reached yet."""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import numpy as np
from tests.support import wait_for

from medserve.core.audit import AuditLog
from medserve.core.context import Principal, RequestContext, new_request_id
from medserve.core.events import PredictionEvent
from medserve.core.monitoring_config import MonitoringSettings
from medserve.core.prediction_log import PredictionLog
from medserve.core.store.monitoring import MonitoringStore
from medserve.core.store.sql import SqlRegistryStore
from medserve.serving.extensions.security import AuditObserver

APP = Principal(subject="app-1", kind="api_key", key_id="k1", roles=frozenset({"app"}))


def _event(rows: int = 1) -> PredictionEvent:
    X = np.random.default_rng(0).random((rows, 4)).astype(np.float32)
    outputs = {"label": np.zeros(rows, dtype=np.int64), "probabilities": np.full((rows, 2), 0.5)}
    context = RequestContext(request_id=new_request_id(), principal=APP, client="127.0.0.1")
    return PredictionEvent(context, "risk", 1, ["a", "b", "c", "d"], X, outputs, 0.001)


async def _next_turn() -> None:
    """Let the event loop run what is ready (a request boundary), then continue."""
    turn = asyncio.get_running_loop().create_future()
    turn.get_loop().call_soon(turn.set_result, None)
    await turn


async def _serve(log: PredictionLog, audit: AuditLog, events: int, late: int) -> None:
    """Requests arriving over a few loop turns; ``late`` more just before shutdown."""
    loop = asyncio.get_running_loop()
    log.drive(loop)
    audit.drive(loop)
    observer = AuditObserver(audit, b"s" * 32)
    rows = 0
    for i in range(events):
        event = _event(rows=1 + i % 3)
        rows += event.inputs.shape[0]
        log.on_prediction(event)
        observer.on_prediction(event)
        if i % 50 == 0:
            await _next_turn()
    # The loop keeps running (ticks pack here) while another thread waits for the writer to
    # have inserted every row so far.
    await loop.run_in_executor(
        None,
        functools.partial(
            wait_for,
            lambda: log.written >= rows,
            timeout_s=30,
            what=f"the ticks and the writer to store {rows} rows",
        ),
    )
    for _ in range(late):
        event = _event()
        log.on_prediction(event)
        observer.on_prediction(event)


def test_driven_logs_pack_on_the_loop_and_drain_on_close(tmp_path: Any) -> None:
    store = SqlRegistryStore(f"sqlite:///{tmp_path / 'home.db'}")
    settings = MonitoringSettings(flush_interval_s=1.0)
    log = PredictionLog(store.engine, settings, salt=b"s" * 32, signature_of=lambda m, v: None)
    audit = AuditLog(store.engine)
    audit.start()
    packers: set[int] = set()
    packs = log.packs

    def recording(batch: Any) -> Any:
        packers.add(threading.get_ident())
        return packs(batch)

    log.packs = recording  # type: ignore[method-assign]
    loop_thread = threading.get_ident()
    asyncio.run(_serve(log, audit, events=900, late=40))
    written_before_close = log.written
    log.close()
    audit.close()
    rows = sum(1 + i % 3 for i in range(900)) + 40
    assert written_before_close >= sum(1 + i % 3 for i in range(900))  # the tick's packs
    assert log.written == rows
    assert log.dropped == 0
    assert MonitoringStore(store.engine).count_predictions("risk") == rows
    assert loop_thread in packers  # packed on the event loop...
    assert len(packers) == 2  # ...and what no tick reached, by the writer as it closed
    entries = list(audit.entries())
    assert [e["action"] for e in entries].count("predict") == 940
    assert audit.verify().ok
    store.close()

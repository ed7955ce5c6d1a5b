"""The registry, governance and monitoring routes run their synchronous SQL off the event loop (a
statement executed where an event loop is running would stall every request in the worker)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from tests.unit.serving.inprocess_app import (
    MODEL,
    fire_alert,
    records,
    serve,
)


class SqlThreads:
    """Every SQL statement any engine runs while recording, and whether an event loop was
    running in the thread that ran it."""

    def __init__(self) -> None:
        self.recording = False
        self.on_loop: list[str] = []
        self.off_loop = 0

    def __call__(self, *args: Any) -> None:
        if not self.recording:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.off_loop += 1
        else:
            self.on_loop.append(str(args[2]).split("\n", 1)[0])


@pytest.fixture
def sql_threads() -> Iterator[SqlThreads]:
    recorder = SqlThreads()
    event.listen(Engine, "before_cursor_execute", recorder)
    yield recorder
    event.remove(Engine, "before_cursor_execute", recorder)


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", f"/v1/models/{MODEL}/versions/1/card", None),
    ("GET", f"/v1/models/{MODEL}/versions/1/card?format=html", None),
    ("GET", f"/v1/models/{MODEL}/versions/1/evaluations", None),
    ("GET", f"/v1/models/{MODEL}/versions/1/report", None),  # 404: no report, after SQL
    ("GET", f"/v1/models/{MODEL}/versions/1/gate", None),
    ("GET", f"/v1/models/{MODEL}/monitoring", None),
    ("GET", f"/v1/models/{MODEL}/versions/1/importance", None),
    ("POST", f"/v1/models/{MODEL}/explain", {"instances": records(1)}),
    # the registry views of the app factory
    ("GET", "/v1/models", None),
    ("GET", f"/v1/models/{MODEL}", None),
    ("GET", f"/v1/models/{MODEL}/versions/production", None),
    ("GET", f"/v1/models/{MODEL}/aliases/history", None),
]


def test_governance_and_monitoring_routes_run_sql_off_the_event_loop(
    home: Path, sql_threads: SqlThreads
) -> None:
    alert_id = fire_alert(home)
    now = datetime.now(UTC)
    outcomes = {
        "outcomes": [
            {"prediction_id": "p-0", "outcome": 1},
            {
                "patient_id": "MRN-1",
                "model": MODEL,
                "start": (now - timedelta(hours=1)).isoformat(),
                "end": now.isoformat(),
                "outcome": 1,
            },
        ]
    }
    routes = [
        *ROUTES,
        ("POST", "/v1/outcomes", outcomes),
        ("POST", f"/v1/alerts/{alert_id}/acknowledge", {"note": "seen"}),
    ]
    with serve(home, security=False) as (client, _):
        assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200  # loaded
        statuses = {}
        for method, path, body in routes:
            sql_threads.recording = True
            try:
                response = client.request(method, path, json=body)
            finally:
                sql_threads.recording = False
            statuses[path] = response.status_code
            assert response.status_code in (200, 404), (path, response.text)
            assert sql_threads.on_loop == [], (path, sql_threads.on_loop)
    assert sql_threads.off_loop > 0  # the recorder saw the routes' statements
    assert statuses[f"/v1/alerts/{alert_id}/acknowledge"] == 200
    assert statuses[f"/v1/models/{MODEL}/versions/1/report"] == 404

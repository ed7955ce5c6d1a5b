"""``medserve demo --drift``: a scripted drift scenario through a real server.

A stable stream of breast-cancer cases is sent, then a shifted one (as if a lab re-calibrated its
image-analysis software: size features read about one standard deviation larger). Monitoring runs
on each window; the shifted window crosses the PSI alert threshold, the alert is delivered to a
webhook receiver on loopback, and the report (table + HTML) is shown.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from medserve.core.monitoring_config import ModelMonitoringConfig
from medserve.core.registry.service import Registry
from medserve.core.store.monitoring import MonitoringStore
from medserve.faces.cli.monitoring import alerts_table

MODEL = "breast-cancer"
SHIFTED_FEATURES = ("mean radius", "mean perimeter", "mean area", "worst radius")


class _Receiver:
    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.alerts.append(
                    json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _stream(shift: float, n: int, seed: int) -> list[dict[str, float]]:
    # lazy import (the demo trains models (scikit-learn))
    from medserve.faces.demo.data import breast_cancer_frame  # noqa: PLC0415

    X, _ = breast_cancer_frame()
    sample = X.sample(n, random_state=seed, replace=True).reset_index(drop=True)
    for column in SHIFTED_FEATURES:
        sample[column] = sample[column] + shift * X[column].std()
    return [{k: float(v) for k, v in row.items()} for row in sample.to_dict("records")]


def run_drift_demo(
    registry: Registry,
    console: Console,
    *,
    url: str,
    headers: dict[str, str] | None = None,
    n: int = 300,
    report_path: Path | None = None,
) -> dict[str, Any]:
    """Send a stable then a shifted stream to ``url`` (a running server over ``registry``'s home)
    and show what monitoring makes of it. Returns the shifted window's run."""
    # lazy import (pulls pandas)
    from medserve.features.monitoring.report import drift_table, html_report  # noqa: PLC0415
    from medserve.features.monitoring.runner import run_model  # noqa: PLC0415 (pulls pandas)

    store = MonitoringStore(registry.store)
    receiver = _Receiver()
    try:
        cfg = store.config(MODEL).model_copy(
            update={"webhook_url": receiver.url, "positive_class": "malignant"}
        )
        store.set_config(MODEL, ModelMonitoringConfig.model_validate(cfg.model_dump()), "demo")
        if not any(r.metric == "psi_max" for r in store.rules(MODEL)):
            store.add_rule(MODEL, "psi_max", ">", cfg.psi_alert, min_n=100, actor="demo")
        result: dict[str, Any] = {}
        with httpx.Client(timeout=30, headers=headers or {}) as client:
            for label, shift, seed in (("stable", 0.0, 11), ("shifted", 1.0, 12)):
                start = datetime.now(UTC)
                rows = _stream(shift, n, seed)
                with console.status(f"sending {n} {label} cases to {MODEL}..."):
                    for i in range(0, n, 10):
                        response = client.post(
                            f"{url}/v1/models/{MODEL}/predict",
                            json={"instances": rows[i : i + 10]},
                            headers={"X-Site": "demo-lab"},
                        )
                        response.raise_for_status()
                    _wait_logged(store, n, start)
                now = datetime.now(UTC) + timedelta(seconds=1)
                window = (now - start).total_seconds()
                result = run_model(store, registry.store, MODEL, window_s=window, now=now)
                psi_max = result["drift"]["summary"]["psi_max"]
                console.print(
                    f"[bold]{label} window[/]: {n} predictions, largest PSI {psi_max:.3f}"
                )
        console.print(drift_table(result))
        for alert in receiver.alerts:
            console.print(f"[bold red]webhook received:[/] {alert['text']}")
        console.print(alerts_table(store.alerts(MODEL)))
        if report_path is not None:
            report_path.write_text(
                html_report(MODEL, store.runs(MODEL), store.alerts(MODEL), cfg.psi_alert)
            )
            console.print(f"HTML report: {report_path}")
        return result
    finally:
        receiver.close()


def _wait_logged(store: Any, n: int, since: datetime, timeout_s: float = 30.0) -> None:
    """Prediction logs are written asynchronously: wait until this window's rows are in."""

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(store.predictions(MODEL, since, datetime.now(UTC) + timedelta(seconds=1))) >= n:
            return
        time.sleep(0.2)

"""The scripted drift scenario (``medserve demo --drift``) against a real server."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console
from tests.integration.test_monitoring_http import _register
from tests.support import start_server

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.monitoring import MonitoringStore
from medserve.faces.demo.drift import run_drift_demo


def test_drift_demo_fires_one_alert_and_writes_the_report(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _register(home)
    server = start_server(home, workers=1)
    registry = Registry.open(Settings(home=home))
    out = io.StringIO()
    try:
        report = tmp_path / "report.html"
        result = run_drift_demo(
            registry,
            Console(file=out, width=160),
            url=server.url,
            headers=server.headers,
            n=200,
            report_path=report,
        )
        alerts = MonitoringStore(registry.store).alerts("breast-cancer")
    finally:
        registry.close()
        server.stop()
    assert result["drift"]["summary"]["psi_max"] > 0.25
    assert len(alerts) == 1
    assert alerts[0]["delivery"] == "delivered"
    assert alerts[0]["metric"] == "psi_max"
    text = out.getvalue()
    assert "webhook received" in text
    assert text.count("webhook received") == 1
    assert "<svg" in report.read_text()

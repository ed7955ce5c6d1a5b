"""``medserve serve`` as an operator sees it: what it says when it starts and stops, one
access-log line per request, a busy port named with the option that changes it (``demo`` too,
which reads ``MEDSERVE_PORT``), and /metrics scraped with a key of the ``metrics`` role."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
from tests.support import auth, create_key, start_server, wait_for


def _medserve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    full.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "medserve", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )


def test_serve_says_where_how_and_when_it_stops(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home)
    try:
        log = server.log()
        assert f"medserve serving on {server.url} (uvicorn, 1 worker)" in log
        assert "security: on" in log
        assert "models: none aliased yet" in log
        assert "ready: loaded no model" in log  # each worker says what it loaded
        metrics_key = create_key(home, ["metrics"], name="prometheus")
        app_key = create_key(home, ["app"], name="ehr")
        scraped = httpx.get(f"{server.url}/metrics", headers=auth(metrics_key))
        assert scraped.status_code == 200
        assert "medserve_" in scraped.text
        assert httpx.get(f"{server.url}/metrics", headers=auth(app_key)).status_code == 403
        # the metrics role reads nothing else
        for path in ("/v1/models", "/v1/audit", "/v1/served"):
            answer = httpx.get(f"{server.url}{path}", headers=auth(metrics_key))
            assert answer.status_code == 403, path
        answer = httpx.post(
            f"{server.url}/v1/models/patient-jane-roe/predict",
            headers=server.headers,
            json={"instances": [{"name": "Jane Roe"}]},
        )
        assert answer.status_code == 404
        rid = answer.headers["x-request-id"]
        assert httpx.get(f"{server.url}/v1/models/jane", headers=server.headers).is_error
        wait_for(
            lambda: "GET /v1/models/{name} 404" in server.log(),
            timeout_s=10,
            what="the access-log lines",
        )
        lines = server.log().splitlines()
        line = next(x for x in lines if "POST /v1/models/{name}/predict 404" in x)
        assert line.endswith(f"rid={rid}")
        assert "jane" not in server.log().lower()

        busy = _medserve(
            "serve", "--port", server.url.rsplit(":", 1)[1], env={"MEDSERVE_HOME": str(home)}
        )
        assert busy.returncode == 1
        message = " ".join(busy.stderr.split())
        assert "--port" in message
        assert "MEDSERVE_PORT" in message
        assert "Traceback" not in busy.stderr

        # the demo reads MEDSERVE_PORT, and checks it before training anything
        port = server.url.rsplit(":", 1)[1]
        demo = _medserve(
            "demo", env={"MEDSERVE_HOME": str(tmp_path / "demo"), "MEDSERVE_PORT": port}
        )
        assert demo.returncode == 1
        assert f"127.0.0.1:{port}" in " ".join(demo.stderr.split())
    finally:
        code = server.stop()
    assert code == 0
    assert "medserve stopped" in server.log()

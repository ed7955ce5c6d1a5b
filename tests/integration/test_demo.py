"""`medserve demo` end to end: it serves, and every command it prints works as printed."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from tests.support import free_port, wait_for


def test_demo_prints_commands_that_work(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "MEDSERVE_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "medserve", "demo", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"demo exited with {process.returncode}:\n{log.read_text()}")
        try:
            url = f"http://127.0.0.1:{port}/v2/health/ready"
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        try:
            # (the demo evaluates its chat model on 3 cases first: ~15 s on 2 loaded cores)
            wait_for(ready, timeout_s=240, interval_s=0.3, what="the demo server to be ready")
        except AssertionError as error:
            raise AssertionError(f"{error}:\n{log.read_text()}") from None
        printed = log.read_text()
        assert "WITHOUT authentication" in printed
        commands = [
            line.strip() for line in printed.splitlines() if line.strip().startswith("curl ")
        ]
        assert len(commands) >= 6
        assert any("application/fhir+json" in c for c in commands)  # FHIR in and out
        assert any("/cds-services/" in c for c in commands)  # a CDS Hooks call
        chat_card = "/v1/models/smollm2-chat/versions/production/card"
        if "smollm2-chat" in printed:  # the llm extra is installed: its evaluation is shown
            assert any(c.endswith(chat_card) for c in commands), printed
        for command in commands:
            # a bound, not a speed check: the chat call generates on 2 cores that a loaded CI
            # machine shares with everything else
            result = subprocess.run(
                shlex.split(command), capture_output=True, text=True, timeout=180, cwd=tmp_path
            )
            assert result.returncode == 0, (command, result.stderr)
            if result.stdout.startswith("data: "):  # a streamed chat: server-sent events
                events = [x[6:] for x in result.stdout.splitlines() if x.startswith("data: ")]
                assert events[-1] == "[DONE]", (command, events[-3:])
                chunks = [json.loads(e) for e in events[:-1]]
                reasons = [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]]
                assert reasons[-1] in {"stop", "length"}, (command, chunks[-2:])
                continue
            body = json.loads(result.stdout)
            assert "error" not in body, (command, body)
            if command.endswith(chat_card):  # a generative evaluation, with its intervals
                validity = body["hti1_source_attributes"]["validity_test"]["value"]
                assert validity.startswith("n=3: schema_validity "), validity
                assert "field_match " in validity, validity
                assert " to " in validity, validity  # an interval
            if command.endswith("/v1/models/smollm2-chat/versions/production/gate"):
                assert any(p.startswith("field_match ci_low") for p in body["problems"]), body
            if "/cds-services/" in command:
                assert body["cards"][0]["indicator"] in {"info", "warning", "critical"}
            if "application/fhir+json" in command:
                assert body["resourceType"] == "Bundle", body
                assert body["entry"][0]["resource"]["resourceType"] == "RiskAssessment"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)

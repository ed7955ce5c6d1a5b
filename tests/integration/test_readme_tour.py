"""The README's tour, run as written: every fenced block after a ``<!-- tour -->`` marker, in
order, in a temporary folder with its own ``MEDSERVE_HOME``.

A line ``medserve serve ... &`` is not run by the shell: the test starts the server itself
(``tests.support.start_server`` on a free port, with the tour's environment so far) and rewrites
``127.0.0.1:8000`` in the lines after it to that port; ``kill %1`` stops it (SIGTERM) and checks
that it stopped cleanly and said so. Any failing command fails the test with its output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import ServerProcess, start_server

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"<!-- tour -->\s*\n```bash\n(.*?)```", re.S)
_SERVE = re.compile(r"^medserve serve\b.*&\s*(#.*)?$")
_STOP = re.compile(r"^kill %1\b")


def tour_script() -> str:
    blocks = _BLOCK.findall((ROOT / "README.md").read_text())
    assert len(blocks) >= 3, "the README's tour blocks (<!-- tour --> before ```bash) are gone"
    return "\n".join(blocks)


def _run(script: str, cwd: Path, env: dict[str, str], env_out: Path) -> dict[str, str]:
    """Run one stretch of the tour in bash (stop at the first failure); its exported env."""
    full = f"set -euo pipefail\n{script}\nenv -0 > {env_out}\n"
    result = subprocess.run(
        ["bash", "-c", full], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, (
        f"a tour command failed (exit {result.returncode}):\n--- script\n{script}\n"
        f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
    )
    pairs = (item.split("=", 1) for item in env_out.read_text().split("\0") if "=" in item)
    env = dict(pairs)
    env["TOUR_OUTPUT"] = env.get("TOUR_OUTPUT", "") + result.stdout + result.stderr
    return env


def test_readme_tour_runs_as_written(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    (work / ".venv").symlink_to(Path(sys.prefix))  # `source .venv/bin/activate`
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDSERVE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["COLUMNS"] = "80"
    stretch: list[str] = []
    server: ServerProcess | None = None
    outputs: list[str] = []
    try:
        for line in [*tour_script().splitlines(), ""]:
            if not (_SERVE.match(line) or _STOP.match(line)):
                if server is not None:
                    line = line.replace("127.0.0.1:8000", server.url.removeprefix("http://"))
                stretch.append(line)
                continue
            env = _run("\n".join(stretch), work, env, tmp_path / "env")
            outputs.append(env.pop("TOUR_OUTPUT"))
            stretch = []
            if _SERVE.match(line):
                assert server is None, "the tour starts a second server before stopping one"
                home = Path(env["MEDSERVE_HOME"])
                server = start_server(home, env={"PATH": env["PATH"]})
            else:
                assert server is not None, "kill %1 without a server"
                assert server.stop() == 0, server.log()
                log = server.log()
                server = None
                assert "stopped" in log, log
                assert "models: sepsis@production → v1" in log, log  # the start-up banner
                assert "ready: loaded sepsis@production v1" in log, log
                # one access-log line per request: the route's template, never the raw path
                assert "POST /v1/models/{name}/predict 200" in log, log
                assert "/v1/models/sepsis/predict" not in log, log
        env = _run("\n".join(stretch), work, env, tmp_path / "env")
        outputs.append(env.pop("TOUR_OUTPUT"))
    finally:
        if server is not None:
            server.stop()
    printed = "\n".join(outputs)
    assert "passes the promotion gate" in printed, printed[-4000:]
    assert "sepsis@production moved to v1" in printed, printed[-4000:]
    assert "OVERRIDE" not in printed  # production without an override

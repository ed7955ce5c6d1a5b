"""``python -m benchmarks.explain_latency``: time ``POST /v1/models/{model}/explain`` for one row.

Issue 6 asks for an explanation of one row of the demo RandomForest in under 20 ms at the server.
Uses the bench home prepared by ``python -m benchmarks.run`` (or ``benchmarks.governance``): one
worker, security off, sequential requests after a warm-up; prints median, p90 and max.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd

from benchmarks.procs import free_port
from benchmarks.servers import CACHE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="breast-cancer-rf")
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args(argv)
    work = CACHE / "work" / "medserve"
    if not (work / "home").exists():
        print("no bench home: run `python -m benchmarks.run --only medserve` first")
        return 1
    home = Path(tempfile.mkdtemp(prefix="explain-home-"))
    shutil.copytree(work / "home", home, dirs_exist_ok=True)
    port = free_port()
    env = {**os.environ, "MEDSERVE_HOME": str(home), "MEDSERVE_SECURITY": "false"}
    command = [sys.executable, "-m", "medserve", "serve", "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        row = pd.read_csv(work / "sample.csv").iloc[0].to_dict()
        url = f"{base}/v1/models/{args.model}/explain"
        with httpx.Client(timeout=60) as client:
            first = client.post(url, json={"instances": [row]})
            first.raise_for_status()
            times = []
            for _ in range(args.requests):
                started = time.perf_counter()
                client.post(url, json={"instances": [row]}).raise_for_status()
                times.append((time.perf_counter() - started) * 1000)
        times.sort()
        p90 = times[int(0.9 * (len(times) - 1))]
        print(
            f"explain {args.model}, one row ({first.json()['method']}): median "
            f"{statistics.median(times):.1f} ms, p90 {p90:.1f} ms, max {times[-1]:.1f} ms"
        )
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

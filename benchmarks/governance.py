"""``python -m benchmarks.governance``: the cost of governance, A/B in one run.

Starts medserve (2 workers, the bench models) with governance off and on, alternately, on the
same home, and loads each with wrk (single-row v2 requests, c=32) for each model. Rounds are
taken back to back so that on a shared, noisy machine the on/off ratio of one round is
meaningful even when the absolute figures drift. ``--profile DIR`` records py-spy (collapsed
stacks per thread, from every worker process) during each load.

Governance on = authentication (API key), hash-chained audit, de-identified prediction log:
what ``medserve serve`` does by default. Off = ``MEDSERVE_SECURITY=false`` and
``MEDSERVE_MONITOR_LOG_PREDICTIONS=false``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.procs import free_port, process_tree, running
from benchmarks.servers import CACHE, Medserve, v2_body
from benchmarks.training import MODEL_NAMES, load_data
from benchmarks.wrk import Load, ensure_wrk, run_wrk

OFF = {"MEDSERVE_SECURITY": "false", "MEDSERVE_MONITOR_LOG_PREDICTIONS": "false"}


def _py_spy(pids: list[int], seconds: float, out: Path) -> list[subprocess.Popen[bytes]]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    procs = []
    for pid in pids:
        command = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
        command += ["--rate", "200", "--threads", "--format", "raw", "-o", str(out / f"{pid}.txt")]
        procs.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return procs


def _thread_cpu(pids: list[int]) -> dict[str, float]:
    """CPU seconds per thread name, summed over the worker processes (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            seconds = (int(fields[11]) + int(fields[12])) / tick
            key = "main" if task.name == str(pid) else name
            out[key] = out.get(key, 0.0) + seconds
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each c=32 load")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs")
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--only", choices=["on", "off", "both"], default="both")
    parser.add_argument("--profile", type=Path, help="py-spy the workers here (each side)")
    parser.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for 'on'")
    parser.add_argument(
        "--cpu", action="store_true", help="CPU µs per request, per worker thread (Linux)"
    )
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    os.environ.pop("MEDSERVE_SECURITY", None)
    server = Medserve()
    server.prepare()  # fresh home, models registered, an app key in BENCH_AUTHORIZATION
    x, _ = load_data()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    body_dir = CACHE / "work" / "governance"
    body_dir.mkdir(parents=True, exist_ok=True)
    body = body_dir / "one-row.json"
    body.write_bytes(v2_body(x.iloc[:1]))
    extra = dict(item.split("=", 1) for item in args.env)
    sides = {"both": ["off", "on"], "on": ["on"], "off": ["off"]}[args.only]
    results: dict[tuple[int, str, str], float] = {}
    for rnd in range(args.rounds):
        for side in sides:
            ((port, launch),) = server.launches(free_port)
            env = {**launch.env, **(OFF if side == "off" else extra)}
            log = CACHE / "logs" / f"governance-{side}.log"
            base = f"http://127.0.0.1:{port}"
            with running(
                launch.command,
                env=env,
                cwd=launch.cwd,
                log=log,
                ready_urls=[base + p for p in launch.ready_paths],
            ) as proc:
                for model in models:
                    url = f"{base}/v2/models/{model}/infer"
                    run_wrk(wrk, url, body, Load(2, 32, 1.0), body_dir)
                    spies = []
                    if args.profile:
                        out = args.profile / f"r{rnd}-{side}-{model}"
                        out.mkdir(parents=True, exist_ok=True)
                        workers = process_tree(proc.process.pid)[1:]
                        spies = _py_spy(workers, args.seconds, out)
                    workers = process_tree(proc.process.pid)[1:]
                    before = _thread_cpu(workers) if args.cpu else {}
                    result = run_wrk(wrk, url, body, Load(2, 32, args.seconds), body_dir)
                    for spy in spies:
                        spy.wait(30)
                    if args.cpu:
                        after = _thread_cpu(workers)
                        requests = max(1.0, result.rps * args.seconds)
                        per = {
                            k: (after[k] - before.get(k, 0.0)) * 1e6 / requests
                            for k in after
                            if after[k] - before.get(k, 0.0) > 0
                        }
                        shown = ", ".join(f"{k} {v:.0f}" for k, v in sorted(per.items()))
                        print(f"  cpu µs/request ({side}): total {sum(per.values()):.0f}: {shown}")
                    results[(rnd, side, model)] = result.rps
                    bad = f", {result.non_2xx} non-2xx" if result.non_2xx else ""
                    print(
                        f"round {rnd} {side:3} {model}: {result.rps:,.0f} req/s, "
                        f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms{bad}",
                        flush=True,
                    )
                time.sleep(0.2)
    if len(sides) == 2:
        print("governance on / off, same round:")
        for model in models:
            ratios = [
                results[(r, "on", model)] / results[(r, "off", model)]
                for r in range(args.rounds)
                if results.get((r, "off", model))
            ]
            shown = ", ".join(f"{v:.0%}" for v in ratios)
            print(f"  {model}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

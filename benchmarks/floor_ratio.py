"""``python -m benchmarks.floor_ratio``: medserve against the raw-ASGI floor, interleaved.

Starts ``medserve serve`` (governance on, as deployed and as ``benchmarks.governance`` runs its
'on' side: API key, hash-chained audit, prediction log; 2 workers) and the raw-ASGI floor
(``benchmarks/raw_asgi.py``: medserve's uvicorn settings and worker count, the very ONNX file
medserve serves, one intra-op thread), both on 127.0.0.1. wrk loads one, then the other, in each
round (a single-row v2 body, one tensor per feature by default, c=32, ``--seconds`` each), the
order reversed every round; ``--restarts N`` starts N server pairs in turn. The figure is
medserve's req/s over the floor's in the same round: the median over every round of every pair,
with the two-stage (pairs, then rounds) 95% bootstrap interval of ``benchmarks.governance``.

Before any load both servers answer the same body, and their probabilities must agree: a floor
that computed something else would make the ratio meaningless.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks.governance import _Bench, _measure, _median_interval
from benchmarks.procs import BenchError, auth_headers, free_port, running
from benchmarks.servers import CACHE, ROOT, Medserve, v2_body, v2_feature_body
from benchmarks.training import LR, MODEL_NAMES, load_data
from benchmarks.wrk import Load, ensure_wrk

SIDES = ["medserve", "floor"]
GOVERNANCE_OFF_VARIABLES = ("MEDSERVE_SECURITY", "MEDSERVE_MONITOR_LOG_PREDICTIONS")


def _probabilities(url: str, body: bytes) -> list[float]:
    headers = {"Content-Type": "application/json", **auth_headers()}
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    return next(o["data"] for o in answer["outputs"] if o["name"] == "probabilities")


def _status_without_key(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _floor_command(onnx: Path, model: str, port: int, workers: int) -> list[str]:
    command = [sys.executable, "-m", "benchmarks.raw_asgi", "--onnx", str(onnx)]
    return [*command, "--name", model, "--port", str(port), "--workers", str(workers)]


def _run_pair(
    bench: _Bench, onnx: Path, restart: int, results: dict[tuple[int, int, str], float]
) -> None:
    """Start medserve and the floor, check they agree, load them in turn every round, stop."""
    (model,) = bench.models
    body = bench.body.read_bytes()
    with contextlib.ExitStack() as stack:
        ((port, launch),) = bench.server.launches(free_port)
        floor_port = free_port()
        starts = {
            "medserve": (port, launch.command, launch.env, launch.ready_paths),
            "floor": (
                floor_port,
                _floor_command(onnx, model, floor_port, bench.server.workers),
                {**os.environ},
                ["/v2/health/ready", f"/v2/models/{model}/ready"],
            ),
        }
        bases: dict[str, str] = {}
        roots: dict[str, int] = {}
        for side, (p, command, env, ready) in starts.items():
            base = f"http://127.0.0.1:{p}"
            proc = stack.enter_context(
                running(
                    command,
                    env=env,
                    cwd=ROOT,
                    log=CACHE / "logs" / f"floor-ratio-{side}.log",
                    ready_urls=[base + path for path in ready],
                )
            )
            bases[side], roots[side] = base, proc.process.pid
        answers = {s: _probabilities(f"{bases[s]}/v2/models/{model}/infer", body) for s in SIDES}
        if _status_without_key(f"{bases['medserve']}/v2/models/{model}/infer", body) != 401:
            raise BenchError("medserve answered a request without an API key: governance is off")
        if answers["medserve"] != answers["floor"]:
            raise BenchError(f"medserve and the floor disagree on the body: {answers}")
        for side in SIDES:  # warm-up: first requests, ONNX sessions, the log's first write
            bench.load(f"{bases[side]}/v2/models/{model}/infer", Load(2, 32, 1.0))
        for rnd in range(bench.args.rounds):
            for side in SIDES if rnd % 2 == 0 else SIDES[::-1]:
                results[(restart, rnd, side)] = _measure(
                    bench, bases[side], roots[side], model, rnd, side
                )


def summary(
    results: dict[tuple[int, int, str], float], restarts: int, rounds: int, model: str
) -> list[str]:
    """The report: the pooled median ratio with its interval, then each pair's rounds."""
    by_restart = [
        [results[(k, r, "medserve")] / results[(k, r, "floor")] for r in range(rounds)]
        for k in range(restarts)
    ]
    pooled = [v for ratios in by_restart for v in ratios]
    low, high = _median_interval(by_restart, random.Random(0))
    rps = {s: statistics.median(v for key, v in results.items() if key[2] == s) for s in SIDES}
    lines = [
        f"medserve (governance on) / raw-ASGI floor, req/s of the same round: median of {rounds} "
        f"rounds x {restarts} server pair(s), 95% bootstrap interval",
        f"  {model}: median {statistics.median(pooled):.1%} ({low:.1%} - {high:.1%});"
        f" median req/s medserve {rps['medserve']:,.0f}, floor {rps['floor']:,.0f}",
    ]
    for k, ratios in enumerate(by_restart):
        shown = ", ".join(f"{v:.0%}" for v in ratios)
        lines.append(f"    pair {k + 1}: median {statistics.median(ratios):.0%}: {shown}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each c=32 load")
    parser.add_argument("--rounds", type=int, default=8, help="medserve/floor pairs per restart")
    parser.add_argument(
        "--restarts", type=int, default=3, help="server pairs started one after the other"
    )
    parser.add_argument("--model", default=LR, choices=MODEL_NAMES)
    parser.add_argument("--out", type=Path, help="also write the ratios here (markdown)")
    parser.add_argument(
        "--cpu", action="store_true", help="CPU µs per request, per worker thread (Linux)"
    )
    parser.add_argument(
        "--layout",
        choices=["features", "matrix"],
        default="features",
        help="v2 body: one tensor per feature (as medserve's metadata asks; default) or one "
        "[1, F] matrix tensor",
    )
    parser.add_argument("--profile", type=Path, help="py-spy the workers here (each side)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.restarts < 1 or args.seconds <= 0:
        parser.error("--rounds and --restarts must be at least 1, --seconds above 0")
    wrk = ensure_wrk()
    for name in GOVERNANCE_OFF_VARIABLES:  # governance on: medserve's defaults
        os.environ.pop(name, None)
    server = Medserve()
    server.prepare()  # fresh home, models registered, an app key in BENCH_AUTHORIZATION
    onnx = server.onnx_artifact(args.model)
    x, _ = load_data()
    body_dir = CACHE / "work" / "floor-ratio"
    body_dir.mkdir(parents=True, exist_ok=True)
    body = body_dir / f"one-row-{args.layout}.json"
    make_body = v2_feature_body if args.layout == "features" else v2_body
    body.write_bytes(make_body(x.iloc[:1]))
    bench = _Bench(args, wrk, body, server, [args.model], SIDES, {})
    results: dict[tuple[int, int, str], float] = {}
    for restart in range(args.restarts):
        print(f"-- server pair {restart + 1} of {args.restarts}", flush=True)
        _run_pair(bench, onnx, restart, results)
    lines = summary(results, args.restarts, args.rounds, args.model)
    print("\n".join(lines))
    if args.out:
        command = "python -m benchmarks.floor_ratio " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# medserve / raw-ASGI floor\n\n`{command}`, {time.strftime('%Y-%m-%d %H:%M')}, "
            f"{os.cpu_count()} CPUs\n\n```\n" + "\n".join(lines) + "\n```\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

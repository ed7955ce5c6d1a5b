"""``python -m benchmarks.governance``: the cost of governance, A/B in one run.

Starts two medserve servers (2 workers each, the bench models, one home): governance off and
on. Both stay up, and wrk loads them in turn (single-row v2 requests, c=32), one side then the
other in each round, the order reversed every round: on a shared, noisy machine whose speed
drifts by more than the effect measured, the on/off ratio of one round is what is meaningful,
and the median over rounds is the figure. An idle server costs nothing to the loaded one.
A server pair also keeps a speed of its own for as long as it runs (measured: four pairs of one
build, one after the other, gave LogisticRegression medians of 91%, 93%, 103% and 91%), so
``--restarts N`` starts N pairs in turn and the figure is the median over all their rounds, with
a 95% bootstrap interval.
``--profile DIR`` records py-spy (collapsed stacks per thread, from every worker process)
during each load.

Governance on = authentication (API key), hash-chained audit, de-identified prediction log:
what ``medserve serve`` does by default. Off = ``MEDSERVE_SECURITY=false`` and
``MEDSERVE_MONITOR_LOG_PREDICTIONS=false``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.procs import BenchError, free_port, process_tree, running
from benchmarks.servers import CACHE, Medserve, v2_body
from benchmarks.training import MODEL_NAMES, load_data
from benchmarks.wrk import Load, WrkResult, ensure_wrk, run_wrk

OFF = {"MEDSERVE_SECURITY": "false", "MEDSERVE_MONITOR_LOG_PREDICTIONS": "false"}


def _py_spy(pids: list[int], seconds: float, out: Path) -> list[subprocess.Popen[bytes]]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    procs = []
    for pid in pids:
        command = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
        command += ["--rate", "200", "--threads", "--nonblocking", "--format", "raw"]
        command += ["-o", str(out / f"{pid}.txt")]
        procs.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return procs


def _thread_cpu(pids: list[int]) -> dict[str, float]:
    """CPU seconds per thread name (user, and "NAME sys" for the kernel's part), summed over the
    worker processes (Linux /proc)."""
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
            key = "main" if task.name == str(pid) else name
            for part, index in (("", 11), (" sys", 12)):
                out[key + part] = out.get(key + part, 0.0) + int(fields[index]) / tick
    return out


@dataclass(frozen=True)
class _Bench:
    """What every load of a run shares: the options, wrk, the request body, the servers' setup."""

    args: argparse.Namespace
    wrk: str
    body: Path
    server: Medserve
    models: list[str]
    sides: list[str]
    extra: dict[str, str]  # environment of the 'on' side
    off: dict[str, str]  # environment of the 'off' side

    def load(self, url: str, load: Load) -> WrkResult:
        return run_wrk(self.wrk, url, self.body, load, self.body.parent)


def _measure(bench: _Bench, base: str, root: int, model: str, rnd: int, side: str) -> float:
    """One load on one side: req/s (CPU per request per thread and py-spy when asked)."""
    args = bench.args
    url = f"{base}/v2/models/{model}/infer"
    workers = process_tree(root)[1:]
    spies = []
    if args.profile:
        out = args.profile / f"r{rnd}-{side}-{model}"
        out.mkdir(parents=True, exist_ok=True)
        spies = _py_spy(workers, args.seconds, out)
    before = _thread_cpu(workers) if args.cpu else {}
    result = bench.load(url, Load(2, 32, args.seconds))
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
    if result.non_2xx or result.socket_errors:
        raise BenchError(
            f"{side} {model}: {result.non_2xx} non-2xx responses, {result.socket_errors} "
            f"socket errors: a ratio of failing requests would mean nothing"
        )
    print(
        f"round {rnd} {side:3} {model}: {result.rps:,.0f} req/s, "
        f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms",
        flush=True,
    )
    return result.rps


def _median_interval(
    by_restart: list[list[float]], rng: random.Random, draws: int = 2000
) -> tuple[float, float]:
    """95% bootstrap interval of the median ratio: restarts resampled, then rounds within each.

    Two stages because a server pair keeps a speed of its own for as long as it runs (measured;
    hash seeds or memory layout would do it, not shown which): rounds of one pair are not
    independent draws, so resampling only rounds would give too narrow an interval.
    """
    medians = []
    for _ in range(draws):
        pooled: list[float] = []
        for ratios in rng.choices(by_restart, k=len(by_restart)):
            pooled.extend(rng.choices(ratios, k=len(ratios)))
        medians.append(statistics.median(pooled))
    medians.sort()
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def _run_pair(bench: _Bench, restart: int, results: dict[tuple[int, int, str, str], float]) -> None:
    """Start both servers, load them in turn for every round, stop them."""
    warm = Load(2, 32, 1.0)
    sides = bench.sides
    with contextlib.ExitStack() as stack:
        bases: dict[str, str] = {}
        roots: dict[str, int] = {}
        for side in sides:  # one after the other: the first migrates the shared home
            ((port, launch),) = bench.server.launches(free_port)
            env = {**launch.env, **(bench.off if side == "off" else bench.extra)}
            base = f"http://127.0.0.1:{port}"
            proc = stack.enter_context(
                running(
                    launch.command,
                    env=env,
                    cwd=launch.cwd,
                    log=CACHE / "logs" / f"governance-{side}.log",
                    ready_urls=[base + p for p in launch.ready_paths],
                )
            )
            bases[side], roots[side] = base, proc.process.pid
        for model in bench.models:
            for side in sides:  # warm-up: first requests, ONNX sessions, the log's first write
                bench.load(f"{bases[side]}/v2/models/{model}/infer", warm)
            for rnd in range(bench.args.rounds):
                # off/on, then on/off: a machine that speeds up or slows down during the run
                # favours neither side
                for side in sides if rnd % 2 == 0 else sides[::-1]:
                    results[(restart, rnd, side, model)] = _measure(
                        bench, bases[side], roots[side], model, rnd, side
                    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each c=32 load")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs per restart")
    parser.add_argument(
        "--restarts", type=int, default=1, help="server pairs started one after the other"
    )
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--only", choices=["on", "off", "both"], default="both")
    parser.add_argument("--profile", type=Path, help="py-spy the workers here (each side)")
    parser.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for 'on'")
    parser.add_argument(
        "--log-only",
        action="store_true",
        help="'on' is the prediction log alone (security off on both sides): issue 6's budget",
    )
    parser.add_argument(
        "--journal-only",
        action="store_true",
        help="governance on both sides; 'off' without the write-ahead journal: its cost",
    )
    parser.add_argument("--out", type=Path, help="also write the ratios here (markdown)")
    parser.add_argument(
        "--cpu", action="store_true", help="CPU µs per request, per worker thread (Linux)"
    )
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODEL_NAMES))
    if unknown:
        parser.error(f"--models: {', '.join(unknown)} not among {', '.join(MODEL_NAMES)}")
    wrk = ensure_wrk()
    os.environ.pop("MEDSERVE_SECURITY", None)
    server = Medserve()
    server.prepare()  # fresh home, models registered, an app key in BENCH_AUTHORIZATION
    x, _ = load_data()
    body_dir = CACHE / "work" / "governance"
    body_dir.mkdir(parents=True, exist_ok=True)
    body = body_dir / "one-row.json"
    body.write_bytes(v2_body(x.iloc[:1]))
    extra = dict(item.split("=", 1) for item in args.env)
    if args.log_only:
        extra.setdefault("MEDSERVE_SECURITY", "false")
    sides = {"both": ["off", "on"], "on": ["on"], "off": ["off"]}[args.only]
    off = {"MEDSERVE_JOURNAL": "false"} if args.journal_only else OFF
    bench = _Bench(args, wrk, body, server, models, sides, extra, off)
    results: dict[tuple[int, int, str, str], float] = {}
    for restart in range(args.restarts):
        if args.restarts > 1:
            print(f"-- server pair {restart + 1} of {args.restarts}", flush=True)
        _run_pair(bench, restart, results)
    if len(sides) == 2:
        what = (
            "journal"
            if args.journal_only
            else "prediction log only"
            if args.log_only
            else "governance"
        )
        lines = [
            f"{what} on / off, same round: median of {args.rounds} rounds x {args.restarts} "
            "server pair(s), 95% bootstrap interval"
        ]
        rng = random.Random(0)
        for model in models:
            by_restart = [
                [
                    results[(k, r, "on", model)] / results[(k, r, "off", model)]
                    for r in range(args.rounds)
                ]
                for k in range(args.restarts)
            ]
            pooled = [v for ratios in by_restart for v in ratios]
            low, high = _median_interval(by_restart, rng)
            lines.append(
                f"  {model}: median {statistics.median(pooled):.1%} ({low:.1%} - {high:.1%})"
            )
            for k, ratios in enumerate(by_restart):
                shown = ", ".join(f"{v:.0%}" for v in ratios)
                lines.append(f"    pair {k + 1}: median {statistics.median(ratios):.0%}: {shown}")
        print("\n".join(lines))
        if args.out:
            command = "python -m benchmarks.governance " + " ".join(argv or sys.argv[1:])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(
                f"# {what}: on / off\n\n`{command}`, {time.strftime('%Y-%m-%d %H:%M')}, "
                f"{os.cpu_count()} CPUs\n\n```\n" + "\n".join(lines) + "\n```\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

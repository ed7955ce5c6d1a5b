"""``python -m benchmarks.run``: medserve against MLServer and MLflow, one server at a time.

Every server binds 127.0.0.1 on a free port, is started, waited for, loaded with wrk in three
patterns per model, and stopped (its whole process group) before the next one starts, because
on a small machine two servers would steal each other's cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import signal
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from benchmarks.floor import measure_floor
from benchmarks.procs import BenchError, auth_headers, free_port, running
from benchmarks.report import LaunchInfo, Measurement, Report, print_report, write_report
from benchmarks.servers import CACHE, ROOT, SERVERS, Endpoint, Launch, Server
from benchmarks.training import load_data, train_models
from benchmarks.wrk import Load, ensure_wrk, run_wrk

RESULTS = ROOT / "benchmarks" / "results"
console = Console(width=None if Console().is_terminal else 160)


@dataclass(frozen=True)
class Pattern:
    key: str
    title: str
    rows: int
    load: Load
    metrics: tuple[str, ...]


def patterns(quick: bool, duration: float | None) -> list[Pattern]:
    short = 3.0 if quick else 10.0
    return [
        Pattern("c1", "1 row, c=1", 1, Load(1, 1, short), ("p50_ms", "p99_ms")),
        Pattern(
            "c32",
            "1 row, c=32",
            1,
            Load(2, 32, duration or (short if quick else 15.0)),
            ("rps", "p99_ms"),
        ),
        Pattern("batch100", "100 rows, c=4", 100, Load(2, 4, short), ("rows_per_s",)),
    ]


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def probe(url: str, body: bytes) -> str | None:
    """One request before the load, so a wrong body is reported with the server's own words."""
    headers = {"Content-Type": "application/json", **auth_headers()}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return None
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}"
    except (urllib.error.URLError, OSError) as exc:
        return str(exc)


def bench_launch(
    server: Server,
    port: int,
    launch: Launch,
    bodies: dict[str, Any],
    plan: list[Pattern],
    warmup_s: float,
    wrk: str,
    report: Report,
) -> None:
    base = f"http://127.0.0.1:{port}"
    log = CACHE / "logs" / f"{server.name}-{'-'.join(launch.models)}.log"
    shown = shlex.join(launch.command).replace(f"{ROOT}/", "")
    console.print(f"[bold]{server.title}[/] starting: {shown}")
    with running(
        launch.command,
        env=launch.env,
        cwd=launch.cwd,
        log=log,
        ready_urls=[base + p for p in launch.ready_paths],
    ) as proc:
        console.print(f"  ready in {proc.ready_s:.2f} s")
        jobs: list[tuple[str, Pattern, Endpoint]] = []
        for model in launch.models:
            for pattern in plan:
                for endpoint in server.endpoints(model, bodies[model][pattern.rows]):
                    jobs.append((model, pattern, endpoint))
        body_dir = CACHE / "work" / server.name / "bodies"
        body_dir.mkdir(parents=True, exist_ok=True)
        files = {}
        for model, pattern, endpoint in jobs:
            path = body_dir / f"{model}-{pattern.rows}-{endpoint.label}.json"
            path.write_bytes(endpoint.body)
            files[(model, pattern.key, endpoint.label)] = path
            problem = probe(base + endpoint.path, endpoint.body)
            if problem:
                console.print(f"  [red]{model} {endpoint.label} probe failed:[/] {problem}")
        # One warm-up per (model, endpoint) before measuring memory: imports, JIT caches, pools.
        for model, pattern, endpoint in jobs:
            if pattern.key == "c32":
                path = files[(model, pattern.key, endpoint.label)]
                run_wrk(wrk, base + endpoint.path, path, Load(2, 32, warmup_s), body_dir)
        rss_warm = proc.rss_mb()
        for model, pattern, endpoint in jobs:
            path = files[(model, pattern.key, endpoint.label)]
            url = base + endpoint.path
            warm = Load(pattern.load.threads, pattern.load.connections, warmup_s)
            waited = server.settle(base)
            if waited >= 1.0:
                console.print(f"  (waited {waited:.1f} s for the previous load's log backlog)")
            run_wrk(wrk, url, path, warm, body_dir)
            result = run_wrk(wrk, url, path, pattern.load, body_dir)
            m = Measurement(
                server.name,
                model,
                pattern.key,
                pattern.title,
                endpoint.label,
                endpoint.primary,
                pattern.rows,
                pattern.metrics,
                result,
            )
            report.measurements.append(m)
            errors = f", [red]{m.errors} errors[/]" if m.errors else ""
            console.print(
                f"  {model} {pattern.title} {endpoint.label}: {result.rps:,.0f} req/s,"
                f" p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms{errors}"
            )
        report.launches.append(
            LaunchInfo(
                server.name,
                server.version,
                launch.models,
                shlex.join(launch.command).replace(f"{ROOT}/", ""),
                proc.ready_s,
                rss_warm,
                proc.rss_mb(),
            )
        )


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 s loads, 1 s warm-ups")
    parser.add_argument(
        "--only", default=",".join(SERVERS), help=f"comma-separated subset of {','.join(SERVERS)}"
    )
    parser.add_argument("--duration", type=float, help="seconds of the c=32 load (default 15)")
    parser.add_argument(
        "--governance",
        choices=["on", "off"],
        default="on",
        help="medserve with auth + audit + prediction log (default, as deployed) or without",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="folder for latest.json/latest.md (A/B runs: keep the committed results intact)",
    )
    args = parser.parse_args(argv)
    if args.governance == "off":
        os.environ["MEDSERVE_SECURITY"] = "false"
        os.environ["MEDSERVE_MONITOR_LOG_PREDICTIONS"] = "false"
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SERVERS))
    if unknown:
        parser.error(f"unknown server(s) {unknown}; choose from {sorted(SERVERS)}")

    signal.signal(signal.SIGTERM, _terminate)
    wrk = ensure_wrk()
    plan = patterns(args.quick, args.duration)
    warmup_s = 1.0 if args.quick else 2.0
    argv_text = shlex.join(sys.argv[1:] if argv is None else argv)
    report = Report(
        machine=machine(),
        command=f"python -m benchmarks.run {argv_text}".strip(),
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        settings={p.key: {"rows": p.rows, **vars(p.load)} for p in plan} | {"warmup_s": warmup_s},
    )

    x, _ = load_data()
    models = train_models()
    rows = {1: x.iloc[:1], 100: x.iloc[:100]}
    bodies = {name: rows for name in models}
    with console.status("measuring the in-process floor..."):
        report.floor = measure_floor(models, x)

    try:
        for key in chosen:
            server = SERVERS[key]()
            try:
                with console.status(f"preparing {server.title}..."):
                    server.prepare()
                for port, launch in server.launches(free_port):
                    bench_launch(server, port, launch, bodies, plan, warmup_s, wrk, report)
            except BenchError as exc:
                report.failures[key] = str(exc)
                console.print(f"[bold red]{server.title}: {exc}[/]", highlight=False)
    except KeyboardInterrupt:
        console.print("[red]interrupted: servers stopped, partial results written[/]")
        report.failures["interrupted"] = "run interrupted before the end"

    print_report(report, console)
    json_path, md_path = write_report(report, args.out)
    console.print(f"wrote {json_path} and {md_path}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())

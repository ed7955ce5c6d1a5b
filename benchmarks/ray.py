"""The Ray Serve backend against the uvicorn backend, same models, same machine.

``python -m benchmarks.ray [--seconds 3] [--out FILE]``: the two benchmark models registered
once (``benchmarks.servers.Medserve.prepare``), then for each configuration a fresh server
process: ready time, resident memory of its whole process tree (Ray's raylet, GCS, proxy,
controller and replicas included), and wrk on ``/v2/models/breast-cancer-lr/infer`` with one row
at concurrency 32 and 100 rows at concurrency 4. Configurations:

- ``uvicorn x2``: ``medserve serve --workers 2`` (the embedded default on this 2-core box);
- ``ray ingress x1``: Ray Serve, one ingress replica running inference itself
  (``MEDSERVE_RAY_INFERENCE=ingress``): the cost of Ray's HTTP proxy and its hop to a replica;
- ``ray pool x1`` / ``ray pool x2``: the default layout, 1 or 2 ingress replicas calling the
  multiplexed model pool (one more Ray call per request).

Then the shared pieces a cluster adds, on PostgreSQL (``--postgres URI``, default
``$MEDSERVE_TEST_POSTGRES_URI``): an audit append batch under the advisory lock that serialises
appends across nodes (100 entries a transaction, as the writer batches), and a shared
per-credential counter (one ``UPDATE ... RETURNING`` per request) as a cluster-wide rate limit
would need: their rates bound what N nodes can do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.procs import free_port, process_tree, running
from benchmarks.servers import CACHE, Medserve, v2_feature_body
from benchmarks.training import LR, load_data
from benchmarks.wrk import Load, WrkResult, ensure_wrk, run_wrk


@dataclass
class Row:
    config: str
    ready_s: float
    rss_mb: float
    single: WrkResult
    batch: WrkResult
    cpu_us: dict[str, float]  # CPU µs per single-row request, by process, during that run


_TICKS = os.sysconf("SC_CLK_TCK")


def _component(pid: int) -> str:
    """A process's role: Ray names its actors in their command line (``ray::ProxyActor``,
    ``ray::ServeReplica:medserve:medserve-ingress``); others by their program."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    first = raw[0].decode(errors="replace")
    if first.startswith("ray::"):  # Ray appends the running method (".handle_request...")
        role = first.split(":")[-1] if "ServeReplica" in first else first
        return role.split(".")[0] + (" replica" if "ServeReplica" in first else "")
    if "ray/_private/workers" in first or "default_worker" in " ".join(map(str, raw[:3])):
        return "ray worker (idle)"
    joined = " ".join(a.decode(errors="replace") for a in raw[:4])
    if "medserve" in joined and "serve" in joined:
        return "medserve serve (driver or uvicorn)"
    if first.endswith(("python", "python3")):
        return "uvicorn worker" if "multiprocessing" in joined else "python"
    return Path(first).name or "?"


def _cpu_by_component(root: int) -> dict[str, float]:
    """CPU seconds used so far by each process of the tree, summed by role."""
    out: dict[str, float] = {}
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
        name = _component(pid)
        out[name] = out.get(name, 0.0) + seconds
    return out


LOGS = CACHE / "logs"


def _configs() -> list[tuple[str, list[str], dict[str, str]]]:
    return [
        ("uvicorn x2", ["--workers", "2"], {}),
        (
            "ray ingress x1",
            ["--backend", "ray"],
            {"MEDSERVE_RAY_INFERENCE": "ingress", "MEDSERVE_RAY_REPLICAS": "1"},
        ),
        ("ray pool x1", ["--backend", "ray"], {"MEDSERVE_RAY_REPLICAS": "1"}),
        ("ray pool x2", ["--backend", "ray"], {"MEDSERVE_RAY_REPLICAS": "2"}),
    ]


def _measure(bench: Medserve, wrk: str, seconds: float, workdir: Path, only: set[str]) -> list[Row]:
    X, _ = load_data()
    single_body = workdir / "single.json"
    single_body.write_bytes(v2_feature_body(X.iloc[:1]))
    batch_body = workdir / "batch.json"
    batch_body.write_bytes(v2_feature_body(X.iloc[:100]))
    rows = []
    for name, args, extra in _configs():
        if only and name not in only:
            continue
        port = free_port()
        command = [str(bench.cli), "serve", "--host", "127.0.0.1", "--port", str(port), *args]
        env = {
            **bench._env(),
            "MEDSERVE_RAY_NUM_CPUS": "2",
            "MEDSERVE_RAY_REPLICA_CPUS": "0.5",
            "MEDSERVE_RAY_POOL_CPUS": "0.5",
            **extra,
        }
        base = f"http://127.0.0.1:{port}"
        ready = [f"{base}/v2/health/ready", f"{base}/v2/models/{LR}/ready"]
        log = LOGS / f"ray-bench-{name.replace(' ', '-')}.log"
        with running(command, env=env, cwd=workdir, log=log, ready_urls=ready) as server:
            url = f"{base}/v2/models/{LR}/infer"
            run_wrk(wrk, url, single_body, Load(2, 8, 1), workdir)  # warm every replica
            before = _cpu_by_component(server.process.pid)
            single = run_wrk(wrk, url, single_body, Load(2, 32, seconds), workdir)
            after = _cpu_by_component(server.process.pid)
            cpu_us = {
                k: (v - before.get(k, 0.0)) / max(1, single.requests) * 1e6
                for k, v in after.items()
                if v - before.get(k, 0.0) > 0
            }
            batch = run_wrk(wrk, url, batch_body, Load(2, 4, seconds), workdir)
            rows.append(Row(name, server.ready_s, server.rss_mb(), single, batch, cpu_us))
            print(
                f"{name}: ready {server.ready_s:.1f} s, {server.rss_mb():.0f} MB, "
                f"1 row c=32 {single.rps:.0f} req/s (p99 {single.p99_ms:.1f} ms, "
                f"non-2xx {single.non_2xx}), 100 rows c=4 {batch.rps:.0f} req/s",
                flush=True,
            )
    return rows


def _shared_costs(uri: str, seconds: float) -> dict[str, float]:
    """Rates of the pieces every node shares on PostgreSQL."""
    import sqlalchemy as sa

    engine = sa.create_engine(uri)
    table = f"bench_ray_{uuid.uuid4().hex[:8]}"
    out: dict[str, float] = {}
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE TABLE {table} (seq bigserial primary key, at timestamptz, entry text)"
            )
            conn.exec_driver_sql(f"CREATE TABLE {table}_limits (key text primary key, n bigint)")
            conn.exec_driver_sql(f"INSERT INTO {table}_limits VALUES ('k', 0)")
        entry = "x" * 300  # about an audit entry's JSON
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            with engine.begin() as conn:
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727002)")
                conn.exec_driver_sql(
                    f"INSERT INTO {table} (at, entry) VALUES (%(at)s, %(entry)s)",
                    [{"at": datetime.now(UTC), "entry": entry}] * 100,
                )
            done += 100
        out["audit_entries_per_s"] = done / (time.perf_counter() - started)
        latencies = []
        with engine.connect() as conn:
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                t0 = time.perf_counter()
                conn.exec_driver_sql(
                    f"UPDATE {table}_limits SET n = n + 1 WHERE key = 'k' RETURNING n"
                ).scalar_one()
                conn.commit()
                latencies.append(time.perf_counter() - t0)
        out["shared_limit_checks_per_s"] = len(latencies) / sum(latencies)
        out["shared_limit_check_ms"] = statistics.median(latencies) * 1000
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}_limits")
        engine.dispose()
    return out


def _ray_actor_cost(seconds: float) -> dict[str, float]:
    """A cluster-wide counter in one Ray actor (the other way to share a rate limit): one actor
    call per request, from this driver, on a local 1-CPU Ray."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=100 << 20,
        log_to_driver=False,
    )
    try:

        @ray.remote(num_cpus=0)
        class Limits:
            def __init__(self) -> None:
                self.counts: dict[str, int] = {}

            def admit(self, key: str) -> int:
                self.counts[key] = self.counts.get(key, 0) + 1
                return self.counts[key]

        limits = Limits.remote()  # type: ignore[attr-defined]
        ray.get(limits.admit.remote("warm"))
        latencies = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            ray.get(limits.admit.remote("k"))
            latencies.append(time.perf_counter() - t0)
    finally:
        ray.shutdown()
    return {
        "actor_checks_per_s": len(latencies) / sum(latencies),
        "actor_check_ms": statistics.median(latencies) * 1000,
    }


def _report(rows: list[Row], shared: dict[str, float], seconds: float) -> str:
    lines = [
        f"# Ray backend vs uvicorn ({datetime.now(UTC):%Y-%m-%d}, `python -m benchmarks.ray "
        f"--seconds {seconds:g}`)",
        "",
        "Model breast-cancer-lr (ONNX), `/v2/models/breast-cancer-lr/infer`, security on, "
        "journal and prediction log on, SQLite home; wrk on loopback, 2 threads.",
        "",
        "| configuration | ready (s) | RSS (MB) | 1 row c=32 req/s | p50 / p99 ms | "
        "100 rows c=4 req/s | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.config} | {r.ready_s:.1f} | {r.rss_mb:.0f} | {r.single.rps:.0f} | "
            f"{r.single.p50_ms:.1f} / {r.single.p99_ms:.1f} | {r.batch.rps:.0f} | "
            f"{r.batch.p99_ms:.1f} |"
        )
    lines += [
        "",
        "Where the CPU goes (single-row run; CPU µs per request, by process, largest first):",
        "",
    ]
    for r in rows:
        top = sorted(r.cpu_us.items(), key=lambda kv: -kv[1])[:6]
        total = sum(r.cpu_us.values())
        parts = ", ".join(f"{k} {v:.0f}" for k, v in top)
        lines.append(f"- {r.config}: {total:.0f} µs in all: {parts}")
    if shared:
        lines += [
            "",
            "Shared pieces on PostgreSQL (one connection, this machine):",
            f"- audit append, 100-entry batches under the cross-node advisory lock: "
            f"{shared['audit_entries_per_s']:.0f} entries/s",
            f"- a shared per-credential counter (UPDATE ... RETURNING, one per request): "
            f"{shared['shared_limit_checks_per_s']:.0f} checks/s per connection, "
            f"median {shared['shared_limit_check_ms']:.2f} ms",
        ]
    if "actor_checks_per_s" in shared:
        lines.append(
            f"- the same counter in one Ray actor (one actor call per request): "
            f"{shared['actor_checks_per_s']:.0f} checks/s from one caller, "
            f"median {shared['actor_check_ms']:.2f} ms"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--postgres", default=os.environ.get("MEDSERVE_TEST_POSTGRES_URI"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", default="", help="Comma-separated configurations to run.")
    parser.add_argument(
        "--shared-only", action="store_true", help="Only the shared pieces' costs (no servers)."
    )
    args = parser.parse_args(argv)
    rows: list[Row] = []
    if not args.shared_only:
        wrk = ensure_wrk()
        bench = Medserve()
        bench.prepare()
        with tempfile.TemporaryDirectory(prefix="medserve-ray-bench-") as tmp:
            only = {c.strip() for c in args.only.split(",")} if args.only else set()
            rows = _measure(bench, wrk, args.seconds, Path(tmp), only)
    shared = _shared_costs(args.postgres, args.seconds) if args.postgres else {}
    shared.update(_ray_actor_cost(args.seconds))
    text = _report(rows, shared, args.seconds)
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

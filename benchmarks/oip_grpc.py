"""``python -m benchmarks.oip_grpc``: Open Inference Protocol v2 ModelInfer over gRPC, medserve
against MLServer, beside the REST figures of the same servers in the same rounds.

One server at a time (two would steal each other's cores), started with its gRPC port and its
HTTP port: medserve as ``benchmarks.servers.Medserve`` starts it (2 workers, governance on:
API key, journaled audit, de-identified prediction log) plus ``--grpc-port``; MLServer 1.7.1
with default settings, as the REST bench runs it. Each round loads every model in the REST
bench's two patterns, gRPC and REST in turn (the order reversed every round):

* ``1 row, c=32``: single-row requests, 32 in flight;
* ``100 rows, c=4``: 100-row requests, 4 in flight (rows/s is the figure).

The gRPC load generator is asyncio ``grpc.aio`` in ``--clients`` processes (each with its own
event loop and channels: one TCP connection per channel, so the kernel spreads them over
medserve's workers), sending one pre-serialized ``ModelInferRequest`` (one FP32 tensor
``[n, 30]`` in ``contents.fp32_contents``, the same rows as the REST body) and checking only
each answer's status: the client spends no time in protobuf. REST is wrk with the REST bench's
body. The figure is the median over rounds (and ``--restarts`` server starts) with a 95%
bootstrap interval (restarts resampled, then rounds within each, as benchmarks.governance).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.procs import BenchError, free_port, running
from benchmarks.servers import CACHE, ROOT, Launch, Medserve, MLServer, Server, v2_body
from benchmarks.training import MODEL_NAMES, load_data
from benchmarks.wrk import Load, ensure_wrk, run_wrk

INFER = "/inference.GRPCInferenceService/ModelInfer"
READY = "/inference.GRPCInferenceService/ServerReady"
CHANNELS_PER_CLIENT = 4


@dataclass(frozen=True)
class Pattern:
    key: str
    title: str
    rows: int
    concurrency: int


PATTERNS = (Pattern("c32", "1 row, c=32", 1, 32), Pattern("batch100", "100 rows, c=4", 100, 4))


def infer_message(model: str, rows: Any) -> bytes:
    """A serialized ModelInferRequest: one FP32 tensor [n, 30], typed contents."""
    from medserve.serving.protocols.grpc_v2 import grpc_predict_v2_pb2 as pb

    matrix = rows.to_numpy(dtype="float32")
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="input-0", datatype="FP32", shape=list(matrix.shape))
    tensor.contents.fp32_contents.extend(matrix.ravel().tolist())
    return bytes(request.SerializeToString())


def _metadata() -> tuple[tuple[str, str], ...]:
    value = os.environ.get("BENCH_AUTHORIZATION")
    return (("authorization", value),) if value else ()


# -- the load generator (runs in child processes) ----------------------------------------------


async def _load(
    target: str, body: bytes, concurrency: int, seconds: float
) -> tuple[int, int, list[float]]:
    import grpc

    channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS_PER_CLIENT)]
    calls = [ch.unary_unary(INFER) for ch in channels]  # bytes in, bytes out
    metadata = _metadata()
    done = errors = 0
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def one(i: int) -> None:
        nonlocal done, errors
        call = calls[i % len(calls)]
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                await call(body, metadata=metadata, timeout=10)
            except grpc.RpcError:
                errors += 1
                continue
            done += 1
            if len(latencies) < 200_000:
                latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one(i) for i in range(concurrency)))
    for channel in channels:
        await channel.close()
    return done, errors, latencies


def _client(args: tuple[str, bytes, int, float, float]) -> tuple[int, int, list[float]]:
    target, body, concurrency, seconds, start_at = args
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    time.sleep(max(0.0, start_at - time.time()))  # every client starts together
    return asyncio.run(_load(target, body, concurrency, seconds))


@dataclass(frozen=True)
class GrpcResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def grpc_load(
    pool: Any, target: str, body: bytes, concurrency: int, seconds: float, clients: int
) -> GrpcResult:
    share = [
        concurrency // clients + (1 if i < concurrency % clients else 0) for i in range(clients)
    ]
    start_at = time.time() + 0.5
    jobs = [(target, body, c, seconds, start_at) for c in share if c > 0]
    results = pool.map(_client, jobs)
    latencies = sorted(x for _, _, lat in results for x in lat)
    pick = (
        (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3)
        if latencies
        else (lambda q: 0.0)
    )
    return GrpcResult(
        requests=sum(r[0] for r in results),
        errors=sum(r[1] for r in results),
        seconds=seconds,
        p50_ms=pick(0.5),
        p99_ms=pick(0.99),
    )


def wait_grpc_ready(target: str, timeout_s: float = 120.0) -> None:
    import grpc

    from medserve.serving.protocols.grpc_v2 import grpc_predict_v2_pb2 as pb

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        ready = channel.unary_unary(
            READY,
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )
        while time.monotonic() < deadline:
            try:
                if ready(pb.ServerReadyRequest(), timeout=1).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise BenchError(f"gRPC at {target} not ready after {timeout_s:.0f} s")


def probe(target: str, body: bytes) -> None:
    """One call before the load: a wrong request is reported with the server's own words."""
    import grpc

    from medserve.serving.protocols.grpc_v2 import grpc_predict_v2_pb2 as pb

    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(INFER)
        try:
            answer = pb.ModelInferResponse.FromString(call(body, metadata=_metadata(), timeout=30))
        except grpc.RpcError as exc:
            raise BenchError(f"gRPC ModelInfer at {target}: {exc.code()}: {exc.details()}") from exc
    if not answer.outputs:
        raise BenchError(f"gRPC ModelInfer at {target} answered without outputs")


# -- servers ------------------------------------------------------------------------------------


@contextmanager
def serving(server: Server, log_name: str) -> Iterator[tuple[str, str]]:
    """Start ``server`` with gRPC on; yields (REST base URL, gRPC target)."""
    launches = server.launches(free_port)
    if len(launches) != 1:
        raise BenchError(f"{server.title} needs one process for both models")
    http_port, launch = launches[0]
    if isinstance(server, MLServer):
        settings = json.loads((server.workdir / "models" / "settings.json").read_text())
        grpc_port = int(settings["grpc_port"])
        command = launch.command
    else:
        grpc_port = free_port()
        command = [*launch.command, "--grpc-port", str(grpc_port)]
    base = f"http://127.0.0.1:{http_port}"
    target = f"127.0.0.1:{grpc_port}"
    started = Launch(launch.models, command, launch.env, launch.ready_paths, launch.cwd)
    with running(
        started.command,
        env=started.env,
        cwd=started.cwd,
        log=CACHE / "logs" / f"{log_name}.log",
        ready_urls=[base + p for p in started.ready_paths],
    ):
        wait_grpc_ready(target)
        yield base, target


def interval(
    by_restart: list[list[float]], rng: random.Random, draws: int = 2000
) -> tuple[float, float]:
    medians = []
    for _ in range(draws):
        pooled: list[float] = []
        for values in rng.choices(by_restart, k=len(by_restart)):
            pooled.extend(rng.choices(values, k=len(values)))
        medians.append(statistics.median(pooled))
    medians.sort()
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


Key = tuple[str, str, str, str]  # server, model, pattern, transport


def measure(
    server: Server,
    restarts: int,
    rounds: int,
    seconds: float,
    clients: int,
    results: dict[Key, list[list[float]]],
    errors: dict[Key, int],
) -> None:
    wrk = ensure_wrk()
    x, _ = load_data()
    rows = {p.rows: x.iloc[: p.rows] for p in PATTERNS}
    workdir = CACHE / "work" / "grpc-bench"
    workdir.mkdir(parents=True, exist_ok=True)
    bodies: dict[tuple[str, int], Path] = {}
    for model in MODEL_NAMES:
        for n, frame in rows.items():
            path = workdir / f"{model}-{n}.json"
            path.write_bytes(v2_body(frame))
            bodies[(model, n)] = path
    context = multiprocessing.get_context("spawn")
    with context.Pool(clients) as pool:
        for restart in range(restarts):
            with serving(server, f"grpc-bench-{server.name}") as (base, target):
                messages = {
                    (m, n): infer_message(m, f) for m in MODEL_NAMES for n, f in rows.items()
                }
                for (model, n), body in messages.items():
                    probe(target, body)
                    grpc_load(pool, target, body, 4, 1.0, clients)  # warm
                    run_wrk(
                        wrk,
                        f"{base}/v2/models/{model}/infer",
                        bodies[(model, n)],
                        Load(2, 4, 1.0),
                        workdir,
                    )
                for rnd in range(rounds):
                    for model in MODEL_NAMES:
                        for pattern in PATTERNS:
                            body = messages[(model, pattern.rows)]
                            order = (
                                ("grpc", "rest") if (rnd + restart) % 2 == 0 else ("rest", "grpc")
                            )
                            for transport in order:
                                server.settle(base)  # the previous load's log drained first
                                key = (server.title, model, pattern.key, transport)
                                if transport == "grpc":
                                    found = grpc_load(
                                        pool, target, body, pattern.concurrency, seconds, clients
                                    )
                                    rps, failed = found.rps, found.errors
                                else:
                                    threads = 2 if pattern.concurrency >= 2 else 1
                                    wrk_result = run_wrk(
                                        wrk,
                                        f"{base}/v2/models/{model}/infer",
                                        bodies[(model, pattern.rows)],
                                        Load(threads, pattern.concurrency, seconds),
                                        workdir,
                                    )
                                    rps, failed = (
                                        wrk_result.rps,
                                        wrk_result.non_2xx + wrk_result.socket_errors,
                                    )
                                per_restart = results.setdefault(key, [])
                                while len(per_restart) <= restart:
                                    per_restart.append([])
                                per_restart[restart].append(rps * pattern.rows)
                                errors[key] = errors.get(key, 0) + failed
                                print(
                                    f"{server.title:9} {model:20} {pattern.title:14} {transport:4} "
                                    f"round {rnd + 1}: {rps * pattern.rows:9.0f} "
                                    f"{'rows' if pattern.rows > 1 else 'req'}/s"
                                    + (f" ({failed} errors)" if failed else ""),
                                    flush=True,
                                )


def report(
    results: dict[Key, list[list[float]]], errors: dict[Key, int], args: argparse.Namespace
) -> str:
    rng = random.Random(7)
    cells: dict[Key, tuple[float, float, float]] = {}
    for key, by_restart in results.items():
        values = [v for r in by_restart for v in r]
        low, high = interval([r for r in by_restart if r], rng)
        cells[key] = (statistics.median(values), low, high)
    servers = sorted({k[0] for k in results}, key=lambda s: s != "medserve")
    lines = [
        f"# OIP v2 gRPC vs REST, {dt.date.today().isoformat()}",
        "",
        f"`python -m benchmarks.oip_grpc {' '.join(sys.argv[1:])}`: {args.rounds} rounds x "
        f"{args.seconds:g} s per cell, {args.restarts} server start(s), {args.clients} gRPC "
        f"client processes x {CHANNELS_PER_CLIENT} channels; {os.cpu_count()} cores, load "
        "generators on the same machine. Figures: median over rounds [95% bootstrap interval]; "
        "requests/s for 1 row, rows/s for 100 rows.",
        "",
        "| model | pattern | server | gRPC | REST | gRPC / REST |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for model in MODEL_NAMES:
        for pattern in PATTERNS:
            for server in servers:
                g = cells.get((server, model, pattern.key, "grpc"))
                r = cells.get((server, model, pattern.key, "rest"))
                if g is None or r is None:
                    continue
                failed = errors.get((server, model, pattern.key, "grpc"), 0) + errors.get(
                    (server, model, pattern.key, "rest"), 0
                )
                note = f" ({failed} errors)" if failed else ""
                grpc_cell = f"{g[0]:,.0f} [{g[1]:,.0f}, {g[2]:,.0f}]"
                rest_cell = f"{r[0]:,.0f} [{r[1]:,.0f}, {r[2]:,.0f}]"
                lines.append(
                    f"| {model} | {pattern.title} | {server}{note} | {grpc_cell} | {rest_cell} "
                    f"| {g[0] / r[0]:.2f}x |"
                )
    if len(servers) > 1:
        lines += [
            "",
            "| model | pattern | transport | medserve / MLServer |",
            "| --- | --- | --- | --- |",
        ]
        for model in MODEL_NAMES:
            for pattern in PATTERNS:
                for transport in ("grpc", "rest"):
                    ours = cells.get(("medserve", model, pattern.key, transport))
                    peer = cells.get(("MLServer", model, pattern.key, transport))
                    if ours and peer:
                        ratio = ours[0] / peer[0]
                        lines.append(f"| {model} | {pattern.title} | {transport} | {ratio:.1f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default="medserve,mlserver", help="servers, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--clients", type=int, default=2, help="gRPC load-generator processes")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    factories = {"medserve": Medserve, "mlserver": MLServer}
    results: dict[Key, list[list[float]]] = {}
    errors: dict[Key, int] = {}
    try:
        for name in chosen:
            server = factories[name]()
            # a folder of its own: the REST bench may be using the adapters' default ones
            server.workdir = CACHE / "work" / f"grpc-bench-{server.name}"
            print(f"preparing {server.title}...", flush=True)
            server.prepare()
            measure(server, args.restarts, args.rounds, args.seconds, args.clients, results, errors)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    text = report(results, errors, args)
    print(text)
    if args.out is not None:
        out = args.out if args.out.is_absolute() else ROOT / args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

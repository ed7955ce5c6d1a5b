"""One small adapter per server: how to install it, save the models for it, start it, call it.

Each adapter turns the same rows into its server's own request format, so every server is
measured on the protocol its users would send. The medserve adapter is the only place that
knows medserve's command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.procs import BenchError

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"


@dataclass(frozen=True)
class Endpoint:
    """A URL path and a request body; ``primary`` marks the one compared across servers."""

    label: str
    path: str
    body: bytes
    primary: bool = True


@dataclass
class Launch:
    """One server process serving ``models`` (mlflow needs one process per model)."""

    models: list[str]
    command: list[str]
    env: dict[str, str]
    ready_paths: list[str]
    cwd: Path = ROOT


def v2_body(rows: Any) -> bytes:
    """Open Inference Protocol v2: one FP32 tensor [n, 30], flat row-major data."""
    n, width = rows.shape
    tensor = {
        "name": "input-0",
        "shape": [n, width],
        "datatype": "FP32",
        "data": [float(v) for v in rows.to_numpy(dtype="float32").ravel()],
    }
    return json.dumps({"inputs": [tensor]}).encode()


def v2_feature_body(rows: Any) -> bytes:
    """Open Inference Protocol v2 as medserve's model metadata asks for it: one FP32 tensor [n]
    per feature, named after the feature."""
    tensors = [
        {
            "name": str(name),
            "shape": [len(rows)],
            "datatype": "FP32",
            "data": [float(v) for v in rows[name].to_numpy(dtype="float32")],
        }
        for name in rows.columns
    ]
    return json.dumps({"inputs": tensors}).encode()


def records_body(rows: Any) -> bytes:
    """medserve records API: feature names as sklearn's frame has them ("mean radius"...)."""
    return json.dumps({"instances": rows.to_dict(orient="records")}).encode()


def dataframe_split_body(rows: Any) -> bytes:
    return json.dumps({"dataframe_split": rows.to_dict(orient="split", index=False)}).encode()


def _run_logged(command: Sequence[str], log: Path, what: str, cwd: Path = ROOT) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        done = subprocess.run(list(command), stdout=sink, stderr=subprocess.STDOUT, cwd=cwd)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise BenchError(f"{what} failed (exit {done.returncode}); log {log}:\n{tail}")


def ensure_venv(name: str, requirements: list[str]) -> Path:
    """A cached venv under benchmarks/.cache; rebuilt only when the requirement list changes."""
    venv = CACHE / f"venv-{name}"
    stamp = venv / ".bench-requirements"
    wanted = "\n".join(requirements)
    if stamp.exists() and stamp.read_text() == wanted:
        return venv
    python3 = shutil.which("python3") or sys.executable
    log = CACHE / "logs" / f"venv-{name}.log"
    print(f"creating {venv} ({' '.join(requirements)}): takes a few minutes, once")
    if not (venv / "bin" / "python").exists():
        _run_logged([python3, "-m", "venv", str(venv)], log, f"python3 -m venv {venv}")
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    _run_logged([*pip, "--upgrade", "pip"], log, "pip upgrade")
    _run_logged([*pip, *requirements], log, f"pip install {' '.join(requirements)}")
    stamp.write_text(wanted)
    return venv


def _package_version(python: Path, module: str) -> str:
    done = subprocess.run(
        [str(python), "-c", f"import {module}; print({module}.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


@dataclass
class Server:
    """Base adapter; subclasses fill in the four steps."""

    name: str
    title: str
    workdir: Path = field(init=False)
    version: str = field(init=False, default="?")

    def __post_init__(self) -> None:
        self.workdir = CACHE / "work" / self.name

    def prepare(self) -> None:
        """Install if needed and save the models; runs before any timing."""
        raise NotImplementedError

    def launches(self, port: Callable[[], int]) -> list[tuple[int, Launch]]:
        raise NotImplementedError

    def settle(self, base: str, limit_s: float = 180.0) -> float:
        """Wait until work a previous load left behind is done; seconds waited."""
        return 0.0

    def endpoints(self, model: str, rows: Any) -> list[Endpoint]:
        raise NotImplementedError

    def _fresh_workdir(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)

    def _train_in(self, python: Path, fmt: str, out: Path) -> None:
        command = [str(python), "-m", "benchmarks.training", "--format", fmt, "--out", str(out)]
        _run_logged(command, CACHE / "logs" / f"train-{self.name}.log", f"training for {self.name}")


class Medserve(Server):
    """medserve: ``medserve models register`` each .skops file, then ``medserve serve``.

    The lead may change the commands here; nothing else in benchmarks/ knows them.
    """

    workers = 2

    def __init__(self) -> None:
        super().__init__("medserve", "medserve")
        self.cli = Path(sys.executable).with_name("medserve")

    monitor_key: str | None = None

    def _env(self) -> dict[str, str]:
        return {**os.environ, "MEDSERVE_HOME": str(self.workdir / "home")}

    def settle(self, base: str, limit_s: float = 180.0) -> float:
        """Wait for the prediction-log queue to drain, so that a pattern is not measured while
        the writers still work off the previous one's backlog (100-row batches log far more
        rows per second than one SQLite file takes)."""
        import urllib.request

        started = time.monotonic()
        headers = {"Authorization": f"Bearer {self.monitor_key}"} if self.monitor_key else {}
        while time.monotonic() - started < limit_s:
            try:
                request = urllib.request.Request(base + "/metrics", headers=headers)
                with urllib.request.urlopen(request, timeout=5) as response:
                    text = response.read().decode()
            except OSError:
                return time.monotonic() - started
            depth = sum(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("medserve_monitor_log_queue_depth")
            )
            if depth <= 0:
                break
            time.sleep(0.5)
        return time.monotonic() - started

    def prepare(self) -> None:
        if not self.cli.exists():
            raise BenchError(
                f"medserve CLI not found at {self.cli}: install the project (`make test` or "
                "`.venv/bin/pip install -e .`) or run with --only mlserver,mlflow"
            )
        from benchmarks.training import MODEL_NAMES, save_skops, train_models

        self._fresh_workdir()
        save_skops(train_models(), self.workdir)
        log = CACHE / "logs" / "medserve-register.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.unlink(missing_ok=True)
        for name in MODEL_NAMES:
            command = [str(self.cli), "models", "register", name]
            command += [str(self.workdir / f"{name}.skops"), "--alias", "production"]
            command += ["--sample", str(self.workdir / "sample.csv")]
            done = subprocess.run(command, env=self._env(), capture_output=True, text=True)
            with log.open("a") as sink:
                sink.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n")
            if done.returncode != 0:
                raise BenchError(
                    f"`medserve models register {name}` failed (exit {done.returncode}):\n"
                    f"{done.stdout}{done.stderr}"
                )
        if os.environ.get("MEDSERVE_SECURITY", "true").lower() not in {"false", "0", "off"}:
            created = subprocess.run(
                [str(self.cli), "keys", "create", "bench", "--role", "app"],
                env=self._env(),
                capture_output=True,
                text=True,
            )
            key = next((w for w in created.stdout.split() if w.startswith("msk_")), None)
            if created.returncode != 0 or key is None:
                raise BenchError(
                    f"`medserve keys create` failed:\n{created.stdout}{created.stderr}"
                )
            os.environ["BENCH_AUTHORIZATION"] = f"Bearer {key}"
            auditor = subprocess.run(
                [str(self.cli), "keys", "create", "bench-monitor", "--role", "auditor"],
                env=self._env(),
                capture_output=True,
                text=True,
            )
            self.monitor_key = next(
                (w for w in auditor.stdout.split() if w.startswith("msk_")), None
            )
        self.version = _package_version(Path(sys.executable), "medserve")

    def onnx_artifact(self, model: str, ref: str = "production") -> Path:
        """The ONNX file ``medserve serve`` runs for ``model@ref``, found through ``medserve
        models show``; a BenchError if medserve serves that version with another runtime."""
        command = [str(self.cli), "models", "show", f"{model}@{ref}"]
        env = {**self._env(), "COLUMNS": "400"}  # rich must not wrap the sha256 line
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        runtime = re.search(r"runtime (\S+)", done.stdout)
        sha = re.search(r"sha256 ([0-9a-f]{64})", done.stdout)
        if done.returncode != 0 or runtime is None or sha is None:
            raise BenchError(f"`{' '.join(command[1:])}` failed:\n{done.stdout}{done.stderr}")
        if runtime.group(1) != "onnxruntime":
            raise BenchError(f"medserve serves {model}@{ref} with {runtime.group(1)}, not ONNX")
        root = Path(os.environ.get("MEDSERVE_ARTIFACT_ROOT") or self.workdir / "home" / "artifacts")
        for path in root.rglob(sha.group(1)):
            if hashlib.sha256(path.read_bytes()).hexdigest() == sha.group(1):
                return path
        raise BenchError(f"artifact {sha.group(1)} of {model}@{ref} not found under {root}")

    def launches(self, port: Callable[[], int]) -> list[tuple[int, Launch]]:
        from benchmarks.training import MODEL_NAMES

        p = port()
        command = [str(self.cli), "serve", "--host", "127.0.0.1", "--port", str(p)]
        command += ["--workers", str(self.workers)]
        ready = ["/v2/health/ready", *(f"/v2/models/{m}/ready" for m in MODEL_NAMES)]
        return [(p, Launch(list(MODEL_NAMES), command, self._env(), ready))]

    def endpoints(self, model: str, rows: Any) -> list[Endpoint]:
        return [
            Endpoint("v2", f"/v2/models/{model}/infer", v2_body(rows)),
            Endpoint("records", f"/v1/models/{model}/predict", records_body(rows), primary=False),
        ]


class MLServer(Server):
    """Seldon MLServer with mlserver-sklearn, both models in one server, default settings.

    uvloop is pinned below 0.22: MLServer 1.7.1's inference-pool workers fail to load models
    with uvloop 0.22.
    """

    requirements = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22"]

    def __init__(self) -> None:
        super().__init__("mlserver", "MLServer")

    def prepare(self) -> None:
        self.venv = ensure_venv("mlserver", self.requirements)
        self._fresh_workdir()
        self._train_in(self.venv / "bin" / "python", "joblib", self.workdir / "models")
        self.version = _package_version(self.venv / "bin" / "python", "mlserver")

    def launches(self, port: Callable[[], int]) -> list[tuple[int, Launch]]:
        from benchmarks.training import MODEL_NAMES

        http, grpc, metrics = port(), port(), port()
        settings = {"host": "127.0.0.1", "http_port": http, "grpc_port": grpc}
        settings["metrics_port"] = metrics
        (self.workdir / "models" / "settings.json").write_text(json.dumps(settings))
        command = [str(self.venv / "bin" / "mlserver"), "start", str(self.workdir / "models")]
        ready = ["/v2/health/ready", *(f"/v2/models/{m}/ready" for m in MODEL_NAMES)]
        env = {**os.environ, "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}"}
        return [(http, Launch(list(MODEL_NAMES), command, env, ready))]

    def endpoints(self, model: str, rows: Any) -> list[Endpoint]:
        return [Endpoint("v2", f"/v2/models/{model}/infer", v2_body(rows))]


class Mlflow(Server):
    """``mlflow models serve`` with the local env manager: one process per model."""

    requirements = ["mlflow==3.17.2", "scikit-learn"]

    def __init__(self) -> None:
        super().__init__("mlflow", "MLflow")

    def prepare(self) -> None:
        self.venv = ensure_venv("mlflow", self.requirements)
        self._fresh_workdir()
        self._train_in(self.venv / "bin" / "python", "mlflow", self.workdir / "models")
        self.version = _package_version(self.venv / "bin" / "python", "mlflow")

    def launches(self, port: Callable[[], int]) -> list[tuple[int, Launch]]:
        from benchmarks.training import MODEL_NAMES

        env = {**os.environ, "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}"}
        env["MLFLOW_TRACKING_URI"] = f"file://{self.workdir / 'mlruns'}"
        out = []
        for model in MODEL_NAMES:
            p = port()
            command = [str(self.venv / "bin" / "mlflow"), "models", "serve"]
            command += ["-m", str(self.workdir / "models" / model), "-h", "127.0.0.1"]
            command += ["-p", str(p), "--env-manager", "local"]
            out.append((p, Launch([model], command, env, ["/ping"])))
        return out

    def endpoints(self, model: str, rows: Any) -> list[Endpoint]:
        return [Endpoint("invocations", "/invocations", dataframe_split_body(rows))]


SERVERS: dict[str, Callable[[], Server]] = {
    "medserve": Medserve,
    "mlserver": MLServer,
    "mlflow": Mlflow,
}

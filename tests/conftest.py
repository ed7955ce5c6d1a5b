"""Shared fixtures: an isolated medserve home, the demo models, and a real server on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from medserve.registry.service import Registry
from medserve.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh medserve home, selected through the environment as users do."""
    path = tmp_path / "home"
    monkeypatch.setenv("MEDSERVE_HOME", str(path))
    monkeypatch.delenv("MEDSERVE_STORE_URI", raising=False)
    return path


@pytest.fixture
def registry(home: Path) -> Iterator[Registry]:
    reg = Registry.open(Settings(home=home))
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with the demo models registered once for the whole session (read-only use)."""
    from medserve.demo import register_demo_models

    path = tmp_path_factory.mktemp("demo-home")
    reg = Registry.open(Settings(home=path))
    try:
        register_demo_models(reg)
    finally:
        reg.close()
    return path


@dataclass
class ServerProcess:
    url: str
    home: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    home: Path, *, workers: int = 1, env: dict[str, str] | None = None, timeout: float = 60
) -> ServerProcess:
    """Start ``medserve serve`` as a real process on a free loopback port and wait until ready."""
    port = free_port()
    log_path = home / f"server-{port}.log"
    home.mkdir(parents=True, exist_ok=True)
    full_env = {
        **os.environ,
        "MEDSERVE_HOME": str(home),
        "MEDSERVE_RELOAD_INTERVAL_S": "0.2",
        **(env or {}),
    }
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "medserve", "serve", "--port", str(port), "--workers", str(workers)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", home, process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready in {timeout}s:\n{server.log()}")


@pytest.fixture(scope="session")
def demo_server(demo_home: Path) -> Iterator[ServerProcess]:
    """One server over the demo home for read-only protocol tests."""
    server = start_server(demo_home, workers=1, env={"MEDSERVE_MAX_BODY_BYTES": "1000000"})
    yield server
    server.stop()

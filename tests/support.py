"""Test support: a real ``medserve serve`` process on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from medserve.core.store.monitoring import MonitoringStore
from medserve.core.store.tables_monitoring import mon_alerts

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | None],
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    what: str = "the condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that value.

    The one place in the tests that may sleep: a test waits for an observable condition, never
    for a length of time. ``timeout_s`` only bounds a failure (it is generous; reaching the
    condition sooner costs nothing). Raises ``AssertionError`` naming ``what`` on timeout; an
    exception from ``predicate`` propagates at once (use it to fail fast).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)  # noqa: TID251 - the one sanctioned sleep in the tests


@contextmanager
def small_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. ``"24m"``) at ``mount``, for real full-disk tests; skips where
    mounting is not allowed (not root). CI runs as root, where the skip would fail the run."""
    import pytest

    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"a small tmpfs needs root (mount: {done.stderr.strip()[:200]})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(disk: Path) -> Path:
    """Write a file on ``disk`` until it is full; returns it (delete it to make room)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (256 * 1024, 4096, 512, 1):  # down to the last bytes
            with suppress(OSError):
                while os.write(fd, b"\0" * size) == size:
                    pass
    finally:
        os.close(fd)
    return filler


class TcpProxy:
    """A loopback TCP proxy in front of ``target`` that a test cuts and restores: ``cut`` drops
    every open connection and refuses new ones (a database gone from the network), ``restore``
    lets connections through again. Never touches the server behind it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # the accept loop checks for close()
        self.port = int(self._listener.getsockname()[1])
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(source, sink)

    def _drop(self, *sockets: socket.socket) -> None:
        with self._lock:
            for sock in sockets:
                self._open.discard(sock)
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            sockets = list(self._open)
        self._drop(*sockets)

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._listener.close()
        self._thread.join()


def writable_demo_home(demo_home: Path, target: Path) -> tuple[Path, dict[str, float]]:
    """A writable copy of the session's demo home at ``target`` and one breast-cancer record."""
    from medserve.faces.demo.data import breast_cancer_frame

    shutil.copytree(demo_home, target, ignore=shutil.ignore_patterns("*.log", "prometheus"))
    frame, _ = breast_cancer_frame()
    return target, {str(k): float(v) for k, v in frame.iloc[0].to_dict().items()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    url: str
    home: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    # Credentials every request to this server must carry (filled once security is on).
    headers: dict[str, str] = field(default_factory=dict)

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


def create_key(home: Path, roles: list[str], name: str = "test", **kwargs: Any) -> str:
    """A new API key in ``home`` (made before or while a server runs there)."""
    from medserve.core.registry.service import Registry
    from medserve.core.settings import Settings
    from medserve.features.security.keys import SecurityStore

    registry = Registry.open(Settings(home=home))
    try:
        store = SecurityStore(registry.store.engine)  # type: ignore[attr-defined]
        return store.create_key(name, roles, **kwargs).token
    finally:
        registry.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def start_server(
    home: Path, *, workers: int = 1, env: dict[str, str] | None = None, timeout: float = 60
) -> ServerProcess:
    """Start ``medserve serve`` as a real process on a free loopback port and wait until ready.

    Security is on, as in production: ``server.headers`` carries a fresh admin API key.
    """
    home.mkdir(parents=True, exist_ok=True)
    headers = auth(create_key(home, ["admin"], name="test-admin"))
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
    if "MEDSERVE_SECURITY" not in (env or {}):
        full_env.pop("MEDSERVE_SECURITY", None)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "medserve",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", home, process, log_path, headers)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            return httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout_s=timeout, interval_s=0.1, what=f"{server.url} to be ready")
    except AssertionError as error:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"{error}:\n{server.log()}") from None
    return server


def fire_alert_in(store: MonitoringStore, model: str) -> int:
    """A firing ``psi_max`` alert of ``model``, as a monitoring run would leave it; its id."""
    rule = store.add_rule(model, "psi_max", ">", 0.25, actor="test")
    with store.transaction() as conn:
        inserted = conn.execute(
            mon_alerts.insert().values(
                rule_id=rule.id,
                model_name=model,
                metric="psi_max",
                value=0.4,
                threshold=0.25,
                n=300,
                state="firing",
                delivery="delivered",
                attempts=1,
                fired_at=datetime.now(UTC),
            )
        )
        return int(inserted.inserted_primary_key[0])

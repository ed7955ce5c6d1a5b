"""Server processes: start in their own process group, wait for readiness, measure, always stop.

Servers fork workers (uvicorn, gunicorn, MLServer's inference pool), so memory is summed over
the whole process tree and shutdown signals the whole group; leftovers that escaped the group
are killed by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class BenchError(RuntimeError):
    """A benchmark step failed in a way the user must see (missing tool, server died...)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(root: int) -> list[int]:
    tree = _children()
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(tree.get(pid, []))
    return pids


def tree_rss_mb(root: int) -> float:
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    return total / 2**20


def auth_headers() -> dict[str, str]:
    """The credential medserve (security on by default) needs; peers ignore the header."""
    value = os.environ.get("BENCH_AUTHORIZATION")
    return {"Authorization": value} if value else {}


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        request = urllib.request.Request(url, headers=auth_headers())
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    log: Path
    ready_s: float = 0.0

    def rss_mb(self) -> float:
        return tree_rss_mb(self.process.pid)

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    pids = process_tree(process.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        for pid in pids[1:]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        try:
            process.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # Grandchildren re-parented away from the group still get the last word.
    for pid in pids[1:]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running(
    command: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log: Path,
    ready_urls: Sequence[str],
    timeout_s: float = 180.0,
) -> Iterator[Running]:
    """Start ``command``, wait until every URL answers 2xx, yield, then stop the whole group."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(command),
            env=env,
            cwd=cwd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        handle = Running(process, log)
        try:
            pending = list(ready_urls)
            while pending:
                if process.poll() is not None:
                    raise BenchError(
                        f"{command[0]} exited with code {process.returncode} before it was ready;"
                        f" log {log}:\n{handle.log_tail()}"
                    )
                if time.perf_counter() - started > timeout_s:
                    raise BenchError(f"{command[0]} not ready after {timeout_s:.0f} s; log {log}")
                if http_ok(pending[0], timeout=0.5):
                    pending.pop(0)
                else:
                    time.sleep(0.05)
            handle.ready_s = time.perf_counter() - started
            yield handle
        finally:
            _stop(process)

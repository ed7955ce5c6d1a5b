"""Process management for ``medserve serve``: uvicorn workers sharing one loopback socket.

Two measured traps are handled here. uvicorn with several workers leaves Nagle's algorithm on for
accepted sockets (uvicorn #3149), so keep-alive responses wait ~40 ms for a delayed ACK: our
protocol class sets TCP_NODELAY itself on every connection. And Python's cyclic garbage
collector pauses for 50-120 ms under load: each worker freezes the objects that exist after
start-up and raises the generation-0 threshold, so collections are rare and short.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from medserve.core.audit import load_audit_keys
from medserve.core.errors import InvalidRequestError
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not a TCP socket (e.g. a unix socket)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve without authentication anywhere but loopback (and say so on loopback)."""
    if settings.security:
        return
    if not _is_loopback(settings.host):
        raise InvalidRequestError(
            f"refusing to serve on {settings.host} with security off: unset "
            "MEDSERVE_SECURITY (authentication on) or bind 127.0.0.1"
        )
    print(
        "WARNING: SECURITY IS OFF: no authentication, no audit trail. Demo use only, on "
        "loopback only.",
        file=sys.stderr,
    )


def _tls_options(settings: Settings) -> dict[str, Any]:
    if settings.tls_certfile is None and settings.tls_keyfile is None:
        if settings.tls_client_ca is not None:
            raise InvalidRequestError("--tls-client-ca needs --tls-cert and --tls-key")
        return {}
    if settings.tls_certfile is None or settings.tls_keyfile is None:
        raise InvalidRequestError("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
    options: dict[str, Any] = {
        "ssl_certfile": str(settings.tls_certfile),
        "ssl_keyfile": str(settings.tls_keyfile),
    }
    if settings.tls_client_ca is not None:
        options["ssl_ca_certs"] = str(settings.tls_client_ca)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def check_port_free(host: str, port: int) -> None:
    """Fail early, and say which option changes it, when another process holds the port
    (rather than uvicorn's bare ``[Errno 98]`` after everything else has started)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InvalidRequestError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} (is another server "
                f"running there?). Choose another port with --port N or MEDSERVE_PORT=N."
            ) from exc


def served_aliases(settings: Settings) -> list[str]:
    """``name@alias → vN`` for every alias the registry holds: what the workers load."""
    registry = Registry.open(settings)
    try:
        found: list[str] = []
        token: str | None = None
        while True:
            page = registry.store.list_models(page_size=500, page_token=token)
            for model in page.items:
                aliases = registry.store.list_aliases(model.name)
                found += [f"{model.name}@{a} → v{v}" for a, v in sorted(aliases.items())]
            token = page.next_page_token
            if not token:
                return found
    finally:
        registry.close()


def startup_banner(settings: Settings, backend: str, models: list[str]) -> str:
    """What ``medserve serve`` says before it serves: where, how, in which security mode,
    and which models."""
    scheme = "https" if settings.tls_certfile else "http"
    url = f"{scheme}://{settings.host}:{settings.port}"
    plural = "s" if settings.workers != 1 else ""
    security = (
        "on: every call but /v2/health/* needs Authorization: Bearer <key> "
        "(medserve keys create NAME --role app)"
        if settings.security
        else "OFF (demo mode: no authentication, loopback only)"
    )
    if settings.access_log:
        access = f"{settings.log_format} lines on stderr (--log-format json|text, --no-access-log)"
    else:
        access = "off"
    shown = ", ".join(models[:20]) + (f" and {len(models) - 20} more" if len(models) > 20 else "")
    lines = [
        f"medserve serving on {url} ({backend}, {settings.workers} worker{plural})",
        f"  security: {security}",
        f"  models: {shown or 'none aliased yet (medserve models alias NAME production V)'}",
        f"  access log: {access}",
        f"  docs: {url}/docs   health: {url}/v2/health/ready   metrics: {url}/metrics",
        "  stop: Ctrl-C or SIGTERM (in-flight requests finish first)",
    ]
    if settings.grpc_port is not None:
        tls_note = " over TLS" if settings.tls_certfile else ""
        lines.insert(1, f"  gRPC: {settings.host}:{settings.grpc_port}{tls_note} (docs/grpc.md)")
    return "\n".join(lines)


def _check_grpc_port(settings: Settings) -> None:
    """The gRPC port: not the HTTP one, and free (the workers bind it with SO_REUSEPORT, which
    would share it silently with another of this user's processes)."""
    if settings.grpc_port == settings.port:
        raise InvalidRequestError(f"--grpc-port must differ from --port ({settings.port})")
    if importlib.util.find_spec("grpc") is None:
        raise InvalidRequestError("--grpc-port needs the grpc extra: pip install 'medserve[grpc]'")
    try:
        check_port_free(settings.host, settings.grpc_port or 0)
    except InvalidRequestError as exc:
        raise InvalidRequestError(
            f"cannot serve gRPC on {settings.host}:{settings.grpc_port}: it is in use. Choose "
            "another port with --grpc-port N or MEDSERVE_GRPC_PORT=N."
        ) from exc


def _carry_grpc_settings(settings: Settings) -> None:
    """What each worker's gRPC server needs of the command line (host and TLS files as REST's,
    which uvicorn gets as arguments), carried to the workers through the environment."""
    carried = {
        "MEDSERVE_GRPC_PORT": settings.grpc_port,
        "MEDSERVE_HOST": settings.host,
        "MEDSERVE_TLS_CERTFILE": settings.tls_certfile,
        "MEDSERVE_TLS_KEYFILE": settings.tls_keyfile,
        "MEDSERVE_TLS_CLIENT_CA": settings.tls_client_ca,
    }
    for key, value in carried.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = str(value.resolve()) if isinstance(value, Path) else str(value)


def run_server(settings: Settings, app_factory: str) -> None:
    """Serve ``app_factory`` (``module:callable`` building the ASGI app from the environment) in
    uvicorn workers: the faces layer names its app, so this backend imports nothing above it."""
    check_exposure(settings)
    tls = _tls_options(settings)
    check_port_free(settings.host, settings.port)
    if settings.grpc_port is not None:  # every worker binds it (serving/extensions/oip_grpc.py)
        _check_grpc_port(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    os.environ["MEDSERVE_HOME"] = str(settings.home.resolve())
    # Workers rebuild Settings from the environment: carry what the command line decided.
    os.environ["MEDSERVE_SECURITY"] = "true" if settings.security else "false"
    os.environ["MEDSERVE_WORKERS"] = str(settings.workers)
    os.environ["MEDSERVE_ACCESS_LOG"] = "true" if settings.access_log else "false"
    os.environ["MEDSERVE_LOG_FORMAT"] = settings.log_format
    _carry_grpc_settings(settings)

    Registry.open(settings).close()  # migrate once here, not in every worker
    if settings.security:
        load_audit_keys(settings.home)  # created once here, so the workers read one keyring
    os.environ["MEDSERVE_MIGRATE_ON_START"] = "false"
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = settings.home / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    banner = startup_banner(settings, "uvicorn", served_aliases(settings))
    print(banner, file=sys.stderr, flush=True)
    stopped = f"medserve stopped (was serving on {settings.host}:{settings.port})"

    def say_stopped(signum: int, _frame: object) -> None:
        # uvicorn re-raises the signal that stopped it once it has shut down; this handler,
        # restored by then, says so and exits 0 (a requested stop is not a failure)
        print(f"{stopped}: {signal.Signals(signum).name}", file=sys.stderr, flush=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, say_stopped)
    signal.signal(signal.SIGINT, say_stopped)
    uvicorn.run(
        app_factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        http=NoDelayHttpToolsProtocol,
        loop="uvloop",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=30,
        timeout_keep_alive=30,
        server_header=False,
        date_header=False,
        # X-Forwarded-For is believed only from the proxies an operator names (uvicorn's
        # FORWARDED_ALLOW_IPS): else any local process could write what the audit trail
        # keeps as a caller's address (uvicorn trusts 127.0.0.1 by default)
        proxy_headers=bool(os.environ.get("FORWARDED_ALLOW_IPS")),
        **tls,
    )
    print(stopped, file=sys.stderr, flush=True)


@contextlib.contextmanager
def start_background_server(settings: Settings, timeout_s: float = 120.0) -> Iterator[str]:
    """``medserve serve`` in a child process for scripted scenarios; yields its base URL."""

    url = f"http://{settings.host}:{settings.port}"
    env = {**os.environ, "MEDSERVE_HOME": str(settings.home.resolve())}
    command = [sys.executable, "-m", "medserve", "serve", "--host", settings.host]
    command += ["--port", str(settings.port), "--workers", "1"]
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the demo server exited with code {process.returncode}")
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError("the demo server did not become ready") from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)

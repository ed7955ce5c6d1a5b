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
import os
import shutil
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from medserve.settings import Settings


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


def app_factory() -> Any:
    from medserve.serving.app import create_app

    return create_app(Settings())


def run_server(settings: Settings) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    os.environ["MEDSERVE_HOME"] = str(settings.home.resolve())
    from medserve.registry.service import Registry

    Registry.open(settings).close()  # migrate once here, not in every worker
    os.environ["MEDSERVE_MIGRATE_ON_START"] = "false"
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = settings.home / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.resolve())
    uvicorn.run(
        "medserve.serving.server:app_factory",
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
    )

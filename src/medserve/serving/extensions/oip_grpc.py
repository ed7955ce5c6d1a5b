"""Serving extension: the Open Inference Protocol v2 over gRPC (``--grpc-port``).

Its lifespan starts the worker's gRPC server (``serving/protocols/grpc_v2``) when
``MEDSERVE_GRPC_PORT`` is set, and stops it gracefully (in-flight calls finish, new ones are
refused) before the other extensions' lifespans close their writers: it is entered last and so
left first.

The port is bound inside the lifespan, so a port that cannot be bound fails the start-up; the
server starts answering only once the app's lifespan has finished (every extension's resources,
observers and pipeline hooks in place), as uvicorn answers HTTP only then: ``start`` is a task
that runs after the app factory's remaining start-up, which has no ``await`` once the last
lifespan is entered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from medserve.core.errors import InvalidRequestError
from medserve.serving.extension import ServingExtension
from medserve.serving.resources import Resources

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(resources: Resources) -> AsyncIterator[None]:
    port = resources.settings.grpc_port
    if port is None:
        yield
        return
    try:
        # lazy import (grpcio is imported only by a server that serves gRPC)
        from medserve.serving.protocols.grpc_v2.server import (  # noqa: PLC0415
            GRACE_S,
            build_server,
        )
    except ImportError as exc:
        raise InvalidRequestError(
            f"--grpc-port needs the grpc extra (pip install 'medserve[grpc]'): {exc}"
        ) from exc

    server = build_server(resources, port)
    started = asyncio.get_running_loop().create_task(server.start())
    try:
        yield
    finally:
        await started
        await server.stop(GRACE_S)


class GrpcExtension(ServingExtension):
    """``inference.GRPCInferenceService`` beside REST, through the same pipeline."""

    name = "grpc"
    order = 1000  # last in, first out: its calls use every other extension's resources

    def lifespan(self, resources: Resources) -> AbstractAsyncContextManager[None]:
        return lifespan(resources)


extension = GrpcExtension()

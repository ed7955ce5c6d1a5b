"""The gRPC server of one worker process: ``grpc.aio`` on the worker's own event loop.

Each uvicorn worker runs its own gRPC server inside its lifespan (``serving/extensions/
oip_grpc.py``), so a gRPC call uses that worker's data plane, guard, journal, writers and
metrics exactly as its REST calls do: there is no second process and no second copy of the
models. With several workers they all bind the same port with ``SO_REUSEPORT`` (grpc's
``grpc.so_reuseport``), and the kernel spreads connections over them. gRPC keeps a connection
open for many calls (HTTP/2), so one client's calls stay on one worker: spreading load needs
several channels (the benchmark opens one per concurrent stream group). With one worker the
option is off, so a port already taken is an error rather than silently shared.

TLS takes the certificate options REST takes (``--tls-cert``, ``--tls-key``,
``--tls-client-ca``; the latter requires client certificates: mTLS). Messages are bounded by
``MEDSERVE_MAX_BODY_BYTES``, as REST bodies are (grpc answers RESOURCE_EXHAUSTED beyond it).
"""

from __future__ import annotations

import ipaddress

import grpc

from medserve.core.errors import InvalidRequestError
from medserve.core.settings import Settings
from medserve.serving.protocols.grpc_v2.grpc_predict_v2_pb2_grpc import (
    add_GRPCInferenceServiceServicer_to_server,
)
from medserve.serving.protocols.grpc_v2.service import InferenceService
from medserve.serving.resources import Resources

GRACE_S = 30.0  # in-flight calls may finish this long at shutdown (uvicorn's for REST)


def address(host: str, port: int) -> str:
    """``host:port`` as grpc takes it (an IPv6 literal in brackets)."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass  # a name (localhost)
    return f"{host}:{port}"


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS from the REST certificate options; None when they are unset (plaintext)."""
    cert, key, client_ca = settings.tls_certfile, settings.tls_keyfile, settings.tls_client_ca
    if cert is None and key is None:
        if client_ca is not None:
            raise InvalidRequestError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise InvalidRequestError("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
    try:
        chain, private_key = cert.read_bytes(), key.read_bytes()
        roots = client_ca.read_bytes() if client_ca is not None else None
    except OSError as exc:
        raise InvalidRequestError(f"cannot read a TLS file for gRPC: {exc.strerror}") from exc
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )


def build_server(resources: Resources, port: int) -> grpc.aio.Server:
    """A bound, not yet started, server for ``resources`` on the REST host and ``port``."""
    settings = resources.settings
    options = [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]
    server = grpc.aio.server(options=options)
    add_GRPCInferenceServiceServicer_to_server(InferenceService(resources), server)  # type: ignore[no-untyped-call]
    where = address(settings.host, port)
    credentials = server_credentials(settings)
    try:
        if credentials is None:
            server.add_insecure_port(where)
        else:
            server.add_secure_port(where, credentials)
    except RuntimeError as exc:  # grpc's "Failed to bind"
        raise InvalidRequestError(f"cannot serve gRPC on {where}: {exc}") from exc
    return server

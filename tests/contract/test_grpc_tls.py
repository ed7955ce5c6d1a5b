"""gRPC with the certificate options REST takes, served by every worker of a two-worker server
(``SO_REUSEPORT``), and a graceful stop; the kserve SDK's client over TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kserve import InferenceGRPCClient, InferInput, InferRequest
from tests.support import (
    ServerProcess,
    auth,
    create_key,
    free_port,
    wait_for,
    writable_demo_home,
)

from medserve.serving.protocols.grpc_v2 import grpc_predict_v2_pb2 as pb
from medserve.serving.protocols.grpc_v2.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

MODEL = "breast-cancer"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class TlsServer(ServerProcess):
    """A :class:`ServerProcess` (its ``log`` and ``stop``) with a gRPC target and a certificate."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        url: str,
        target: str,
        cert: Path,
        token: str,
        home: Path,
        log_path: Path,
    ) -> None:
        super().__init__(url, home, process, log_path, auth(token))
        self.target = target
        self.cert = cert
        self.token = token

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.cert.read_bytes())

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def tls_server(demo_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    folder = tmp_path_factory.mktemp("grpc-tls")
    home, _ = writable_demo_home(demo_home, folder / "home")
    cert, key = self_signed(folder)
    token = create_key(home, ["admin"], name="tls-admin")
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "MEDSERVE_HOME": str(home), "MEDSERVE_RELOAD_INTERVAL_S": "0.2"}
    for inherited in ("PROMETHEUS_MULTIPROC_DIR", "MEDSERVE_SECURITY", "MEDSERVE_GRPC_PORT"):
        env.pop(inherited, None)
    log = folder / "server.log"
    command = [sys.executable, "-m", "medserve", "serve", "--port", str(port), "--workers", "2"]
    command += ["--grpc-port", str(grpc_port), "--tls-cert", str(cert), "--tls-key", str(key)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = TlsServer(
        process, f"https://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", cert, token, home, log
    )

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            with grpc.secure_channel(server.target, server.credentials()) as channel:
                grpc_ready = (
                    GRPCInferenceServiceStub(channel)
                    .ServerReady(pb.ServerReadyRequest(), timeout=1)
                    .ready
                )
            rest = httpx.get(
                f"{server.url}/v2/health/ready", verify=server.tls_context(), timeout=1
            )
        except (grpc.RpcError, httpx.HTTPError):
            return False
        return bool(grpc_ready) and rest.status_code == 200

    try:
        wait_for(ready, timeout_s=90, interval_s=0.2, what="the TLS server (REST and gRPC)")
        yield server
    finally:
        server.stop(timeout=60)


async def test_kserve_client_over_tls_on_every_worker(
    tls_server: TlsServer, reference: Any
) -> None:
    X = reference.matrix(MODEL, 10)
    body = {
        "inputs": [
            {"name": "input", "shape": [10, 30], "datatype": "FP32", "data": X.ravel().tolist()}
        ]
    }
    rest = httpx.post(
        f"{tls_server.url}/v2/models/{MODEL}/infer",
        json=body,
        headers={"Authorization": f"Bearer {tls_server.token}"},
        verify=tls_server.tls_context(),
        timeout=30,
    ).json()
    expected = next(o for o in rest["outputs"] if o["name"] == "probabilities")["data"]
    headers = [("authorization", f"Bearer {tls_server.token}")]
    for _ in range(8):  # one connection each: the kernel spreads them over the two workers
        client = InferenceGRPCClient(
            tls_server.target, use_ssl=True, root_certificates=str(tls_server.cert), retries=0
        )
        try:
            tensor = InferInput(name="input", shape=[10, 30], datatype="FP32")
            tensor.set_data_from_numpy(X)
            answer = await client.infer(
                InferRequest(model_name=MODEL, infer_inputs=[tensor]), headers=headers
            )
        finally:
            await client.close()
        probabilities = next(o for o in answer.outputs if o.name == "probabilities").as_numpy()
        np.testing.assert_array_equal(probabilities.ravel(), np.asarray(expected, dtype=np.float32))


def test_plaintext_is_refused_on_the_tls_port(tls_server: TlsServer) -> None:
    with (
        grpc.insecure_channel(tls_server.target) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_graceful_stop_closes_the_grpc_port(tls_server: TlsServer) -> None:
    tls_server.process.send_signal(signal.SIGTERM)
    assert tls_server.process.wait(timeout=60) == 0, tls_server.log()
    assert "Traceback" not in tls_server.log()
    channel = grpc.secure_channel(tls_server.target, tls_server.credentials())
    with channel, pytest.raises(grpc.RpcError) as caught:
        GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

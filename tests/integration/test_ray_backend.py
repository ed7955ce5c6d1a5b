"""``medserve serve --backend ray`` on a real local Ray (2 CPUs, fractional replicas) with a
PostgreSQL registry and artifacts on a loopback S3: every protocol through Ray, production moved
under load with no failed request, hot reload across two ingress replicas, a 90/10 canary inside
a 99.9% binomial interval, shadows logged and never returned (a failing one harmless), then the
audit trail verified and the prediction log complete after the replicas shut down."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from scipy.stats import binom
from sklearn.linear_model import LogisticRegression
from tests.cluster_fixtures import postgres_schema, s3_environment
from tests.support import free_port, wait_for

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.monitoring import MonitoringStore
from medserve.core.store.traffic import TrafficStore
from medserve.faces.demo.interop import (
    MODEL,
    example_bundle,
    example_hook_request,
    register_cardio_model,
)
from medserve.faces.demo.llm import CHAT_MODEL, smollm2_path
from medserve.features.governance.gate import set_alias_gated
from medserve.features.governance.traffic import set_traffic
from medserve.features.llm.register import register_gguf
from medserve.features.security.keys import SecurityStore

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.filterwarnings("ignore")]

FHIR = "application/fhir+json"
APPROVER = {"actor": "ray-test", "reason": "integration test", "override_approver": "Dr. Test"}


@dataclass
class RayServer:
    url: str
    headers: dict[str, str]
    env: dict[str, str]
    settings: Settings
    process: subprocess.Popen[bytes]
    log: Path
    sent: Counter[str]  # successful predictions sent, by protocol

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return httpx.post(f"{self.url}{path}", headers=headers, timeout=60, **kwargs)

    def records(self, row: dict[str, float], patient: str | None = None) -> dict[str, Any]:
        extra = {"x-patient-id": patient} if patient else {}
        r = self.post(f"/v1/models/{MODEL}/predict", json={"instances": [row]}, headers=extra)
        assert r.status_code == 200, r.text
        self.sent["records"] += 1
        body: dict[str, Any] = r.json()
        return body


@pytest.fixture(scope="module")
def postgres_uri() -> Iterator[str]:
    with postgres_schema("medserve_ray", "the Ray backend test") as uri:
        yield uri


ROW = {
    "age": 67.0,
    "sex_male": 1.0,
    "glucose": 140.0,
    "creatinine": 1.4,
    "systolic_bp": 150.0,
    "diastolic_bp": 90.0,
    "bmi": 31.0,
    "hypertension": 1.0,
}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, ray_cluster: str, s3_endpoint: str, postgres_uri: str
) -> Iterator[RayServer]:
    env = s3_environment(s3_endpoint)
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    bucket = f"medserve-ray-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    home = tmp_path_factory.mktemp("ray-home")
    settings = Settings(
        home=home, store_uri=postgres_uri, artifact_uri=f"s3://{bucket}/medserve", security=True
    )
    registry = Registry.open(settings)
    try:
        register_cardio_model(registry)  # v1, production
        register_cardio_model(registry, alias=None)  # v2: the next version
        rng = np.random.default_rng(3)  # v3: other inputs, so a shadow of it always fails
        X = pd.DataFrame(rng.normal(size=(80, 3)), columns=["x1", "x2", "x3"])
        registry.register(MODEL, LogisticRegression().fit(X, X["x1"] > 0), sample=X)
        # the OpenAI-compatible API: the demo's SmolLM2-135M GGUF (its artifact in S3 too)
        register_gguf(registry, CHAT_MODEL, smollm2_path(), alias="production")
        security = SecurityStore(registry.store.engine)  # type: ignore[attr-defined]
        token = security.create_key("ray-admin", ["admin"]).token
    finally:
        registry.close()
    port = free_port()
    full_env = {
        **os.environ,
        **env,
        "MEDSERVE_HOME": str(home),
        "MEDSERVE_STORE_URI": postgres_uri,
        "MEDSERVE_ARTIFACT_URI": settings.artifact_uri or "",
        "MEDSERVE_RELOAD_INTERVAL_S": "0.2",
        "MEDSERVE_RAY_REPLICAS": "2",
        "MEDSERVE_RAY_REPLICA_CPUS": "0.5",
        "MEDSERVE_RAY_POOL_CPUS": "0.5",
    }
    full_env.pop("MEDSERVE_SECURITY", None)
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = home / "ray-serve.log"
    command = [sys.executable, "-m", "medserve", "serve", "--backend", "ray"]
    command += ["--ray-address", ray_cluster, "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"medserve serve --backend ray exited:\n{log.read_text()}")
        try:
            return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout_s=240, interval_s=0.5, what="the Ray backend to be ready")
        yield RayServer(
            url,
            {"Authorization": f"Bearer {token}"},
            full_env,
            settings,
            process,
            log,
            Counter(),
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _registry(server: RayServer) -> Registry:
    return Registry.open(server.settings, run_migrations=False)


def test_every_protocol_answers_through_ray(server: RayServer) -> None:
    assert server.records(ROW)["version"] == 1
    v2 = {
        "inputs": [
            {"name": name, "shape": [1], "datatype": "FP64", "data": [value]}
            for name, value in ROW.items()
        ]
    }
    r = server.post(f"/v2/models/{MODEL}/infer", json=v2)
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == "1"
    server.sent["v2"] += 1
    r = server.post(
        f"/v1/models/{MODEL}/predict",
        content=json.dumps(example_bundle()),
        headers={"Content-Type": FHIR},
    )
    assert r.status_code == 200, r.text
    server.sent["fhir"] += 1
    r = server.post(f"/cds-services/{MODEL}", json=example_hook_request())
    assert r.status_code == 200, r.text
    assert r.json()["cards"]
    server.sent["cds"] += 1
    chat = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4,
        "temperature": 0,
    }
    r = server.post("/openai/v1/chat/completions", json=chat)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


def test_production_moves_across_replicas_with_no_failed_request(server: RayServer) -> None:
    failures: list[str] = []
    versions: Counter[int] = Counter()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(headers=server.headers, timeout=60) as client:
            while not stop.is_set():
                r = client.post(
                    f"{server.url}/v1/models/{MODEL}/predict", json={"instances": [ROW]}
                )
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                server.sent["records"] += 1
                versions[r.json()["version"]] += 1

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_for(lambda: versions[1] >= 20, timeout_s=60, what="load on version 1")
        registry = _registry(server)
        try:
            set_alias_gated(registry, MODEL, "production", 2, **APPROVER)
        finally:
            registry.close()
        wait_for(lambda: versions[2] >= 20, timeout_s=60, what="version 2 answering")
        settled = sum(versions.values())
        wait_for(
            lambda: sum(versions.values()) >= settled + 100, timeout_s=60, what="100 more answers"
        )
    finally:
        stop.set()
        worker.join(timeout=60)
    assert failures == []
    # both ingress replicas follow: every answer now comes from version 2
    tail = Counter(server.records(ROW)["version"] for _ in range(60))
    assert tail == Counter({2: 60})


def test_a_90_10_canary_through_ray_holds_inside_a_binomial_interval(server: RayServer) -> None:
    registry = _registry(server)
    try:
        set_traffic(registry, MODEL, "production", {2: 90, 1: 10}, **APPROVER)
    finally:
        registry.close()

    def both_replicas_split() -> bool:
        seen = Counter(server.records(ROW)["version"] for _ in range(100))
        return seen[1] > 0 and seen[2] > 0

    wait_for(both_replicas_split, timeout_s=60, what="the canary split")
    wait_for(both_replicas_split, timeout_s=60, what="the canary split, again")
    n = 2000
    counts: Counter[int] = Counter()
    with httpx.Client(headers=server.headers, timeout=60) as client:
        for _ in range(n):
            r = client.post(f"{server.url}/v1/models/{MODEL}/predict", json={"instances": [ROW]})
            assert r.status_code == 200, r.text
            counts[r.json()["version"]] += 1
    server.sent["records"] += n
    low, high = binom.interval(0.999, n, 0.10)
    assert low <= counts[1] <= high, counts


def test_shadows_through_ray_are_logged_never_returned(server: RayServer) -> None:
    registry = _registry(server)
    try:
        set_traffic(registry, MODEL, "production", {2: 100}, [1, 3], **APPROVER)
        traffic = TrafficStore(registry.store)
        wait_for(
            lambda: all(server.records(ROW)["version"] == 2 for _ in range(40)),
            timeout_s=60,
            what="the canary to end",
        )
        answers = [server.records(ROW) for _ in range(40)]
        assert {a["version"] for a in answers} == {2}
        assert all("shadow" not in str(a) for a in answers)

        def logged() -> list[dict[str, Any]] | None:
            rows = traffic.shadow_results(MODEL)
            ok = [r for r in rows if r["shadow_version"] == 1]
            bad = [r for r in rows if r["shadow_version"] == 3]
            return rows if len(ok) >= 40 and len(bad) >= 40 else None

        rows = wait_for(logged, timeout_s=120, what="the shadow results")
        assert all(not r["failed"] and r["agree"] == 1.0 for r in rows if r["shadow_version"] == 1)
        assert all(r["failed"] for r in rows if r["shadow_version"] == 3)
    finally:
        registry.close()


def test_a_keys_rate_limit_is_one_count_across_the_replicas(server: RayServer) -> None:
    """A key limited to 1 request/s, 12 requests at once over both ingress replicas: each
    window the burst touched admitted exactly one (the replicas' own shares would admit one
    each), and every request was counted in the shared table."""
    registry = _registry(server)
    try:
        engine = registry.store.engine  # type: ignore[attr-defined]
        issued = SecurityStore(engine).create_key("ray-limited", ["app"], rate_limit=1)
        headers = {"Authorization": f"Bearer {issued.token}"}
        statuses: list[int] = []

        def one() -> None:
            r = httpx.post(
                f"{server.url}/v1/models/{MODEL}/predict",
                json={"instances": [ROW]},
                headers=headers,
                timeout=60,
            )
            statuses.append(r.status_code)

        threads = [threading.Thread(target=one) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert len(statuses) == 12
        assert 200 in statuses
        assert set(statuses) <= {200, 429}, statuses
        server.sent["records"] += statuses.count(200)
        digest = hashlib.sha256(issued.key.key_id.encode()).hexdigest()[:40]
        with engine.connect() as conn:
            totals = [
                int(t)
                for t in conn.execute(
                    sa.text(
                        "SELECT total FROM cluster_counters WHERE scope = 'rate' "
                        "AND counter_key = :k ORDER BY window_ms"
                    ),
                    {"k": digest},
                ).scalars()
            ]
        assert sum(totals) == 12
        assert statuses.count(200) == len(totals)  # one admitted per window touched
    finally:
        registry.close()


def test_after_shutdown_the_audit_verifies_and_the_log_is_complete(server: RayServer) -> None:
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=180) == 0, server.log.read_text()[-3000:]
    done = subprocess.run(
        [sys.executable, "-m", "medserve", "audit", "verify"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audit trail intact" in done.stdout
    registry = _registry(server)
    try:
        logged = MonitoringStore(registry.store).count_predictions(MODEL)
    finally:
        registry.close()
    assert logged == sum(server.sent.values()), (logged, server.sent)

"""Server behaviour over time: hot reload, failure isolation, batching, graceful shutdown."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import select
import shutil
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tests.support import start_server, wait_for

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.faces.demo import demo_models
from medserve.faces.demo.data import breast_cancer_frame


@pytest.fixture
def work_home(demo_home: Path, tmp_path: Path) -> Path:
    """A writable copy of the demo home (training the demo models again would be slow)."""
    target = tmp_path / "home"
    shutil.copytree(demo_home, target, ignore=shutil.ignore_patterns("*.log", "prometheus"))
    return target


def one_row(n: int = 1, offset: int = 0) -> list[dict[str, float]]:
    frame, _ = breast_cancer_frame()
    return [
        {k: float(v) for k, v in r.items()}
        for r in frame.iloc[offset : offset + n].to_dict(orient="records")
    ]


def test_hot_reload_under_load_loses_no_request(work_home: Path) -> None:
    frame, target = breast_cancer_frame()
    other = make_pipeline(StandardScaler(), LogisticRegression(C=0.001, max_iter=1000)).fit(
        frame, target
    )
    registry = Registry.open(Settings(home=work_home))
    try:
        old = registry.store.get_alias("breast-cancer", "production")
        new = registry.register("breast-cancer", other, sample=frame).version
    finally:
        registry.close()
    server = start_server(work_home, workers=2)
    statuses: Counter[int] = Counter()
    # (caller, version) of every answer in the order answered. Each caller keeps one keep-alive
    # connection, so it talks to one worker throughout: a caller's answers are one worker's.
    answers: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    body = {"instances": one_row()}
    callers = 4

    def hammer(caller: int) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=10, headers=server.headers) as client:
                while not stop.is_set():
                    response = client.post("/v1/models/breast-cancer/predict", json=body)
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        answers.append((caller, response.json()["version"]))
        except BaseException as error:  # surfaced by at_least() instead of a silent thread
            errors.append(error)

    def at_least(n: int) -> bool:
        if errors:
            raise errors[0]
        return len(answers) >= n

    def every_caller_saw_new() -> bool:
        if errors:
            raise errors[0]
        return {c for c, v in answers if v == new} == set(range(callers))

    threads = [threading.Thread(target=hammer, args=(c,)) for c in range(callers)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: at_least(50), timeout_s=60, what="50 answers before the alias moves")
        before_move = len(answers)
        registry = Registry.open(Settings(home=work_home))
        try:
            registry.store.set_alias(
                "breast-cancer", "production", new, actor="test", reason="hot reload"
            )
        finally:
            registry.close()
        wait_for(every_caller_saw_new, timeout_s=60, what="every caller to get the new version")
        followed = len(answers)
        wait_for(
            lambda: at_least(followed + 100), timeout_s=60, what="100 answers after the switch"
        )
    finally:
        stop.set()
        for t in threads:
            t.join()
        server.stop()
    assert not errors, errors
    assert set(statuses) == {200}, statuses  # no request lost while the workers reloaded
    # Before the alias moved only the old version answered...
    assert {v for _, v in answers[:before_move]} == {old}
    # ...and once a worker has answered with the new version it never answers with the old one
    # again (per caller: old*, then new*), so after every worker followed only the new answers.
    for caller in range(callers):
        mine = [v for c, v in answers if c == caller]
        switched = mine.index(new)
        assert set(mine[:switched]) <= {old}, (caller, mine)
        assert set(mine[switched:]) == {new}, (caller, mine)
    assert {v for _, v in answers[followed:]} == {new}


def test_model_that_fails_to_load_is_isolated(work_home: Path) -> None:
    registry = Registry.open(Settings(home=work_home))
    try:
        number = registry.store.get_alias("diabetes-progression", "production")
        sha = registry.store.get_version("diabetes-progression", number).artifact_sha256
        path = registry.artifacts.path(sha, verify=False)
    finally:
        registry.close()
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    server = start_server(work_home)
    try:
        assert httpx.get(f"{server.url}/v2/health/ready", headers=server.headers).status_code == 200
        broken = httpx.post(
            f"{server.url}/v1/models/diabetes-progression/predict",
            json={"instances": [{"age": 0.0}]},
            headers=server.headers,
        )
        assert broken.status_code == 503
        assert "failed to load" in broken.json()["error"]
        assert (
            httpx.get(
                f"{server.url}/v2/models/diabetes-progression/ready", headers=server.headers
            ).status_code
            == 503
        )
        fine = httpx.post(
            f"{server.url}/v1/models/breast-cancer/predict",
            json={"instances": one_row()},
            headers=server.headers,
        )
        assert fine.status_code == 200
        served = httpx.get(f"{server.url}/v1/served", headers=server.headers).json()
        assert [f["model"] for f in served["failures"]] == ["diabetes-progression"]
    finally:
        server.stop()


def _enable_batching(home: Path, name: str, config: dict[str, Any]) -> None:
    registry = Registry.open(Settings(home=home))
    try:
        number = registry.store.get_alias(name, "production")
        registry.store.update_version(name, number, serving_config={"batching": config})
    finally:
        registry.close()


def test_batching_gives_each_of_64_callers_its_own_answer(work_home: Path) -> None:
    _enable_batching(work_home, "breast-cancer-rf", {"max_batch_size": 16, "max_wait_ms": 25})
    demo = next(d for d in demo_models() if d.name == "breast-cancer-rf")
    demo.estimator.fit(demo.frame, demo.target)
    expected = demo.estimator.predict_proba(demo.frame.iloc[:64])
    classes = list(demo.estimator.classes_)
    server = start_server(work_home)

    async def call_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=server.url, timeout=20, headers=server.headers
        ) as client:
            calls = [
                client.post(
                    "/v1/models/breast-cancer-rf/predict", json={"instances": one_row(1, i)}
                )
                for i in range(64)
            ]
            bad = client.post(
                "/v1/models/breast-cancer-rf/predict",
                json={"instances": [{**one_row(1, 0)[0], "mean radius": "big"}]},
            )
            return await asyncio.gather(*calls, bad)

    try:
        responses = asyncio.run(call_all())
        metrics = httpx.get(f"{server.url}/metrics", headers=server.headers).text
    finally:
        server.stop()
    *good, bad = responses
    assert bad.status_code == 422
    for i, response in enumerate(good):
        assert response.status_code == 200, response.text
        probs = response.json()["predictions"][0]["probabilities"]
        np.testing.assert_allclose([probs[c] for c in classes], expected[i], atol=1e-5)
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.labels.get("model") == "breast-cancer-rf"
    }
    total = samples["medserve_batch_size_rows_sum"]
    count = samples["medserve_batch_size_rows_count"]
    assert total == 64.0  # every row went through a runtime call once
    assert count < 64  # and some calls carried several requests


def test_sigterm_lets_in_flight_requests_finish(work_home: Path) -> None:
    # A long batching wait keeps a request in flight while the server is told to stop.
    _enable_batching(work_home, "breast-cancer", {"max_batch_size": 1000, "max_wait_ms": 1500})
    server = start_server(work_home)
    port = int(server.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.connect()
        assert connection.sock is not None
        client_port = connection.sock.getsockname()[1]
        connection.request(
            "POST",
            "/v1/models/breast-cancer/predict",
            body=json.dumps({"instances": one_row()}),
            headers={**server.headers, "Content-Type": "application/json"},
        )
        # In flight = the server has accepted the connection and read the whole request.
        wait_for(
            lambda: _server_has_read(port, client_port),
            timeout_s=20,
            interval_s=0.01,
            what="the server to read the request",
        )
        unanswered = not select.select([connection.sock], [], [], 0)[0]
        server.process.send_signal(signal.SIGTERM)
        assert unanswered, "answered before SIGTERM: the batching wait no longer holds it"
        status = connection.getresponse().status
    finally:
        connection.close()
        code = server.stop()
    assert status == 200
    # uvicorn re-raises the signal after its graceful shutdown, so the exit status names it
    assert code in (0, -signal.SIGTERM)
    assert "Traceback" not in server.log()


def _server_has_read(server_port: int, client_port: int) -> bool:
    """Whether the server has accepted the connection from ``client_port`` and read every byte
    sent on it, from the kernel's socket table: a connection still in the listen backlog has no
    inode (no process holds it), and ``rx_queue`` counts bytes received but not yet read."""
    table = Path("/proc/net/tcp")
    if not table.exists():
        pytest.skip("needs Linux's /proc/net/tcp to see that the request reached the server")
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues, inode = fields[1], fields[2], fields[4], fields[9]
        if int(local.split(":")[1], 16) == server_port and (
            int(remote.split(":")[1], 16) == client_port
        ):
            return inode != "0" and int(queues.split(":")[1], 16) == 0
    return False

"""Monitoring over a real 2-worker server: explanations, outcomes, the monitoring view, and no
prediction-log loss when the server is stopped with SIGTERM under load."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from tests.support import ServerProcess, start_server, wait_for

from medserve.core.context import stored_request_id
from medserve.core.phi import load_or_create_salt, pseudonymize
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.monitoring import MonitoringStore

MODEL = "breast-cancer"
RAW_PATIENT = "MRN-778899"


def _register(home: Path) -> list[dict[str, float]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medserve.core.registry.signature import infer_signature
    from medserve.faces.demo.data import breast_cancer_frame

    X, y = breast_cancer_frame()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    registry = Registry.open(Settings(home=home))
    try:
        registry.register(
            MODEL,
            model,
            sample=X,
            signature=infer_signature(X, range_margin=0.5),
            alias="production",
        )
    finally:
        registry.close()
    return [{k: float(v) for k, v in row.items()} for row in X.head(8).to_dict("records")]


@pytest.fixture
def server(tmp_path: Path) -> tuple[ServerProcess, list[dict[str, float]]]:
    home = tmp_path / "home"
    rows = _register(home)
    return start_server(home, workers=2, env={"MEDSERVE_MONITOR_SITES": '["north"]'}), rows


def _wait_until_logged(home: Path, ids: list[str]) -> None:
    """Until the server's prediction-log writers have stored every one of ``ids``."""
    registry = Registry.open(Settings(home=home), run_migrations=False)
    try:
        store = MonitoringStore(registry.store)
        wait_for(
            lambda: set(ids) <= set(store.prediction_ids(MODEL)),
            timeout_s=30,
            what=f"the prediction log to store {ids}",
        )
    finally:
        registry.close()


def _functional_checks(server: ServerProcess, rows: list[dict[str, float]]) -> list[str]:
    """Explain, explain-on-predict, outcomes by id and by patient; returns the ids logged."""
    h = server.headers
    url = server.url
    with httpx.Client(timeout=30) as client:
        explained = client.post(
            f"{url}/v1/models/{MODEL}/explain", json={"instances": rows[:2]}, headers=h
        )
        assert explained.status_code == 200, explained.text
        body = explained.json()
        assert body["method"] == "linear_exact"
        assert body["target"] == "malignant"
        first = body["explanations"][0]
        assert first["base_value"] + sum(first["attributions"].values()) == pytest.approx(
            first["prediction"], abs=1e-6
        )
        assert "points" in first["top"][0]

        predicted = client.post(
            f"{url}/v1/models/{MODEL}/predict",
            json={"instances": rows[:3], "explain": True},
            headers={**h, "X-Patient-ID": RAW_PATIENT, "X-Site": "north"},
        )
        assert predicted.status_code == 200, predicted.text
        result = predicted.json()
        assert len(result["explanation"]["explanations"]) == 3
        ids = [f"{result['request_id']}-{i}" for i in range(3)]

        v2 = client.post(
            f"{url}/v2/models/{MODEL}/infer",
            json={
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 30],
                        "datatype": "FP64",
                        "data": list(rows[3].values()),
                    }
                ]
            },
            headers={**h, "X-Request-ID": "v2-fixed-id"},
        )
        assert v2.status_code == 200, v2.text
        assert v2.headers["x-request-id"] == "v2-fixed-id"
        salt = load_or_create_salt(server.home)  # a caller's request id is stored keyed
        ids.append(f"{stored_request_id('v2-fixed-id', None, salt)}-0")

        # The workers' prediction logs write in the background: outcomes match logged rows.
        _wait_until_logged(server.home, ids)
        outcome = client.post(
            f"{url}/v1/outcomes",
            json={
                "outcomes": [
                    {"prediction_id": ids[0], "outcome": "malignant"},
                    {
                        "patient_id": RAW_PATIENT,
                        "model": MODEL,
                        "start": "2000-01-01T00:00:00Z",
                        "end": "2100-01-01T00:00:00Z",
                        "outcome": "benign",
                    },
                ]
            },
            headers=h,
        )
        assert outcome.status_code == 200, outcome.text
        assert outcome.json()["matched"] == [1, 3]

        bad = client.post(f"{url}/v1/outcomes", json={"outcomes": [{"outcome": 1}]}, headers=h)
        assert bad.status_code == 400

        view = client.get(f"{url}/v1/models/{MODEL}/monitoring", headers=h)
        assert view.status_code == 200
        assert view.json()["config"]["psi_alert"] == 0.25
        importance = client.get(f"{url}/v1/models/{MODEL}/versions/1/importance", headers=h)
        assert importance.status_code == 200
        assert importance.json()["method"] == "linear_exact"
        metrics = client.get(f"{url}/metrics", headers=h).text
        assert "medserve_monitor_log_rows_written_total" in metrics
        assert "medserve_monitor_log_queue_depth" in metrics
    return ids


def test_monitoring_endpoints_and_no_log_loss_on_sigterm(
    server: tuple[ServerProcess, list[dict[str, float]]],
) -> None:
    proc, rows = server
    ids = _functional_checks(proc, rows)

    sent: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = 0
            while not stop.is_set():
                i += 1
                n = 1 + (i + worker) % 3
                try:
                    if i % 2:
                        r = client.post(
                            f"{proc.url}/v1/models/{MODEL}/predict",
                            json={"instances": rows[:n]},
                            headers=proc.headers,
                        )
                        rid = r.json()["request_id"] if r.status_code == 200 else None
                    else:
                        data = [v for row in rows[:n] for v in row.values()]
                        r = client.post(
                            f"{proc.url}/v2/models/{MODEL}/infer",
                            json={
                                "inputs": [
                                    {
                                        "name": "input",
                                        "shape": [n, 30],
                                        "datatype": "FP64",
                                        "data": data,
                                    }
                                ]
                            },
                            headers=proc.headers,
                        )
                        rid = r.headers.get("x-request-id") if r.status_code == 200 else None
                except httpx.HTTPError:
                    return  # the server has gone: whatever was answered is what counts
                if rid is not None:
                    with lock:
                        sent.extend(f"{rid}-{k}" for k in range(n))

    threads = [threading.Thread(target=load, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()

    def answered(n: int) -> bool:
        if not any(t.is_alive() for t in threads):
            raise AssertionError(f"every load thread stopped:\n{proc.log()}")
        with lock:
            return len(sent) >= n

    # A real load, answered while the server runs, then SIGTERM in the middle of it.
    wait_for(lambda: answered(500), timeout_s=120, what="500 answered rows under load")
    assert proc.stop(signal.SIGTERM) == 0, proc.log()
    stop.set()
    for t in threads:
        t.join(30)

    assert len(sent) >= 500
    registry = Registry.open(Settings(home=proc.home))
    try:
        store = MonitoringStore(registry.store)
        logged = store.prediction_ids(MODEL)
        everything = store.predictions(MODEL, datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC))
    finally:
        registry.close()
    expected = sorted(ids + sent)
    assert len(logged) == len(expected)  # count sent = count logged
    assert sorted(logged) == expected
    salt = load_or_create_salt(proc.home)
    patient_rows = [p for p in everything if p.id in ids[:3]]
    assert {p.patient for p in patient_rows} == {pseudonymize(RAW_PATIENT, salt=salt)}
    assert {p.site for p in patient_rows} == {"north"}
    assert [p.outcome for p in patient_rows] == ["benign"] * 3

    database = (proc.home / "registry.db").read_bytes()
    for path in proc.home.glob("registry.db*"):
        database += path.read_bytes()
    assert RAW_PATIENT.encode() not in database
    assert RAW_PATIENT not in proc.log()

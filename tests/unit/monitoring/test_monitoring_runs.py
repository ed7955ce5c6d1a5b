"""Drift, alert rules with a real loopback webhook, and live performance on matured windows.

Predictions go through the real prediction log (queue, writer thread, batch insert) into the
home's SQLite store; runs are evaluated at chosen times instead of waiting for the clock.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pandas as pd
import pytest

from medserve.core.context import RequestContext, stored_request_id
from medserve.core.events import PredictionEvent
from medserve.core.loaded_model import load_version
from medserve.core.monitoring_config import ModelMonitoringConfig, MonitoringSettings
from medserve.core.phi import pseudonymize
from medserve.core.prediction_log import PredictionLog
from medserve.core.registry.service import Registry
from medserve.core.store.monitoring import MonitoringStore
from medserve.faces.demo.data import breast_cancer_frame
from medserve.features.monitoring.runner import run_model

SALT = b"s" * 32
MODEL = "breast-cancer"


def log_stream(
    registry: Registry,
    frame: pd.DataFrame,
    *,
    request_id: str,
    patient: str | None = None,
    site: str | None = None,
) -> list[str]:
    """Predict ``frame`` with the served model and log it as one request; returns the ids."""
    version = registry.store.get_version(MODEL, 1)
    loaded = load_version(registry.artifacts, version)
    X = loaded.validator.records_to_matrix(frame[loaded.signature.feature_names].to_dict("records"))
    context = RequestContext(request_id=request_id, patient_id=patient, site=site)
    event = PredictionEvent(
        context, MODEL, 1, loaded.signature.feature_names, X, loaded.predict(X), 0.001
    )
    log = PredictionLog(
        MonitoringStore(registry.store).engine,
        MonitoringSettings(sites=["north", "south"]),  # registered: logged as sent
        salt=SALT,
        signature_of=lambda m, v: loaded.signature,
    )
    log.on_prediction(event)
    log.close()
    assert log.written == len(frame)
    stored = stored_request_id(request_id, None, SALT)  # a caller's id is kept keyed
    return [f"{stored}-{i}" for i in range(len(frame))]


def shifted(n: int, seed: int) -> pd.DataFrame:
    X, _ = breast_cancer_frame()
    sample = X.sample(n, random_state=seed, replace=True).reset_index(drop=True)
    for column in ("mean radius", "mean texture", "worst radius"):
        sample[column] = sample[column] + 1.2 * X[column].std()
    return sample


def stable(n: int, seed: int) -> pd.DataFrame:
    X, _ = breast_cancer_frame()
    return X.sample(n, random_state=seed, replace=True).reset_index(drop=True)


class Webhook:
    """A real HTTP receiver on loopback; answers 500 to the first ``fail_first`` posts."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[tuple[int, dict[str, Any]]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 500 if len(outer.received) < outer.fail_first else 200
                outer.received.append((status, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(fail_first=1)
    yield hook
    hook.close()


def configure(store: MonitoringStore, **changes: Any) -> None:
    store.set_config(MODEL, ModelMonitoringConfig(**changes), "test")


def test_shifted_stream_fires_each_rule_once_with_retry(
    bc_registry: Registry, webhook: Webhook
) -> None:
    store = MonitoringStore(bc_registry.store)
    configure(store, webhook_url=webhook.url, positive_class="malignant")
    psi_rule = store.add_rule(MODEL, "psi_max", ">", 0.25, min_n=100)
    feature_rule = store.add_rule(MODEL, "psi:mean radius", ">", 0.25, min_n=100, consecutive=2)
    log_stream(bc_registry, shifted(300, seed=1), request_id="shift")
    now = datetime.now(UTC) + timedelta(seconds=5)

    first = run_model(store, bc_registry.store, MODEL, window_s=3600, now=now, backoff_s=0.01)
    summary = first["drift"]["summary"]
    assert summary["psi_max"] > 0.25
    assert "mean radius" in summary["features_alert"]
    radius = first["drift"]["features"]["mean radius"]
    assert radius["ks_pvalue"] < 0.01
    assert radius["ks_drift"] is True
    assert radius["out_of_range_rate"] > 0  # pushed past the largest value seen at registration
    assert len(first["alerts_fired"]) == 1  # the 2-window rule has not fired yet

    # The first delivery got a 500; the retry delivered it.
    assert [status for status, _ in webhook.received] == [500, 200]
    assert webhook.received[0][1] == webhook.received[1][1]
    assert webhook.received[1][1]["rule_id"] == psi_rule.id
    assert webhook.received[1][1]["value"] > 0.25

    second = run_model(
        store, bc_registry.store, MODEL, window_s=3600, now=now + timedelta(seconds=1), backoff_s=0
    )
    assert len(second["alerts_fired"]) == 1  # only the 2-consecutive-window rule, now
    delivered = [body["rule_id"] for status, body in webhook.received if status == 200]
    assert sorted(delivered) == sorted([psi_rule.id, feature_rule.id])  # once per firing rule

    alerts = store.alerts(MODEL)
    assert [(a["rule_id"], a["state"], a["delivery"]) for a in alerts] == [
        (psi_rule.id, "firing", "delivered"),
        (feature_rule.id, "firing", "delivered"),
    ]
    assert alerts[0]["attempts"] == 2
    acked = store.acknowledge(alerts[0]["id"], "dr-owner", "assay change confirmed")
    assert acked["state"] == "acknowledged"
    assert acked["acknowledged_by"] == "dr-owner"

    # A third window still drifting: nothing new is sent.
    run_model(store, bc_registry.store, MODEL, window_s=3600, now=now + timedelta(seconds=2))
    assert len([s for s, _ in webhook.received if s == 200]) == 2


def test_stable_stream_raises_no_alert(bc_registry: Registry, webhook: Webhook) -> None:
    store = MonitoringStore(bc_registry.store)
    configure(store, webhook_url=webhook.url)
    store.add_rule(MODEL, "psi_max", ">", 0.25, min_n=100)
    store.add_rule(MODEL, "prediction_psi", ">", 0.25, min_n=100)
    log_stream(bc_registry, stable(300, seed=2), request_id="stable")
    result = run_model(
        store, bc_registry.store, MODEL, window_s=3600, now=datetime.now(UTC) + timedelta(seconds=5)
    )
    assert result["window"]["n"] == 300
    assert result["drift"]["summary"]["psi_max"] < 0.1
    assert result["drift"]["summary"]["features_alert"] == []
    assert result["alerts_fired"] == []
    assert webhook.received == []
    assert store.alerts(MODEL) == []


def test_recovery_resolves_and_rearms(bc_registry: Registry) -> None:
    store = MonitoringStore(bc_registry.store)
    rule = store.add_rule(MODEL, "psi_max", ">", 0.25, min_n=100)
    log_stream(bc_registry, shifted(200, seed=3), request_id="shift")
    t0 = datetime.now(UTC) + timedelta(seconds=5)
    assert run_model(store, bc_registry.store, MODEL, window_s=60, now=t0)["alerts_fired"]
    assert store.alerts(MODEL)[0]["delivery"] == "no_webhook"
    # Later: the drifting predictions are out of the window, a stable stream is in it.
    log_stream(bc_registry, stable(200, seed=4), request_id="stable")
    logged = store.predictions(MODEL, t0 - timedelta(hours=1), t0 + timedelta(hours=1))
    stable_id, shift_id = (stored_request_id(r, None, SALT) for r in ("stable", "shift"))
    start = min(p.at for p in logged if p.id.startswith(stable_id))
    assert all(p.at < start for p in logged if p.id.startswith(shift_id))
    later = start + timedelta(seconds=5)
    result = run_model(
        store, bc_registry.store, MODEL, window_s=(later - start).total_seconds(), now=later
    )
    assert result["window"]["n"] == 200  # the stable stream only
    assert result["drift"]["summary"]["psi_max"] < 0.25
    assert result["alerts_fired"] == []
    assert store.alerts(MODEL)[0]["state"] == "resolved"
    assert store.rules(MODEL)[0].id == rule.id
    assert store.rules(MODEL)[0].streak == 0


def test_outcomes_join_late_and_count_only_matured_windows(bc_registry: Registry) -> None:
    store = MonitoringStore(bc_registry.store)
    configure(
        store,
        outcome_horizon_s=86400,
        positive_class="malignant",
        subgroups=["site"],
    )
    X, y = breast_cancer_frame()
    rng = np.random.default_rng(0)
    rows = rng.choice(len(X), 200, replace=False)
    ids = []
    for site in ("north", "south"):
        chunk = rows[:100] if site == "north" else rows[100:]
        ids += log_stream(bc_registry, X.iloc[chunk], request_id=f"r-{site}", site=site)
    labels = list(y.iloc[rows])
    # One more prediction for a patient, labelled by (patient, model, window), not by id.
    patient_ids = log_stream(bc_registry, X.iloc[[0]], request_id="p", patient="MRN-0042")
    logged = store.predictions(MODEL, datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC))
    assert logged[-1].patient == pseudonymize("MRN-0042", salt=SALT)
    assert all("MRN" not in p.patient for p in logged if p.patient)

    now = datetime.now(UTC)
    before = run_model(store, bc_registry.store, MODEL, window_s=3600, now=now)
    assert before["performance"]["matured_window"]["n_predictions"] == 0  # not matured yet

    # Labels arrive "days later": by prediction id, and for the patient by time window.
    counts = store.attach_outcomes(
        None, [{"prediction_id": i, "outcome": label} for i, label in zip(ids, labels, strict=True)]
    )
    assert counts == [1] * 200
    by_patient = store.attach_outcomes(
        None,
        [
            {
                "patient": pseudonymize("mrn-0042 ", salt=SALT),
                "model": MODEL,
                "start": now - timedelta(hours=1),
                "end": now + timedelta(hours=1),
                "outcome": str(y.iloc[0]),
            }
        ],
    )
    assert by_patient == [1]
    assert len(patient_ids) == 1

    still_early = run_model(
        store, bc_registry.store, MODEL, window_s=3600, now=now + timedelta(hours=12)
    )
    assert still_early["performance"]["matured_window"]["n_labelled"] == 0
    assert still_early["performance"]["overall"]["n"] == 0

    matured = run_model(store, bc_registry.store, MODEL, window_s=3600, now=now + timedelta(days=1))
    perf = matured["performance"]
    assert perf["matured_window"]["n_labelled"] == 201
    overall = perf["overall"]
    assert overall["n"] == 201
    assert overall["n_positive"] == sum(1 for v in labels if v == "malignant") + int(
        y.iloc[0] == "malignant"
    )
    assert overall["auroc"] > 0.95  # the training data, so near perfect
    assert 0.8 < overall["observed_expected"] < 1.25
    assert overall["sensitivity"] > 0.9
    assert overall["ppv"] > 0.9
    assert set(perf["subgroups"]["site"]) == {"north", "south"}
    assert perf["subgroups"]["site"]["north"]["n"] == 100

"""One monitoring run for one model: drift on the latest window, performance on the latest
matured window, stored as a run, then alert rules evaluated and webhooks delivered.

Retention first: with the model's ``retention_days`` set, log rows older than it are purged
(``retention.purge_expired``), so the server's schedule enforces it.

Rules fire once: a rule whose metric breaches its threshold (with at least ``min_n`` rows) for
``consecutive`` runs opens an alert and delivers it; while that alert is open the rule does not
fire again; when the metric recovers the alert is resolved and the rule re-arms.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np

from medserve.core import metrics
from medserve.core.monitoring_config import ModelMonitoringConfig
from medserve.core.registry.signature import Signature
from medserve.core.store.base import RegistryStore
from medserve.core.store.monitoring import AlertRule, LoggedPrediction, MonitoringStore, inserted_id
from medserve.core.store.tables_monitoring import mon_alerts
from medserve.features.monitoring.drift import window_drift
from medserve.features.monitoring.performance import performance
from medserve.features.monitoring.retention import purge_expired

log = logging.getLogger(__name__)

PERFORMANCE_METRICS = ("auroc", "sensitivity", "ppv", "observed_expected", "calibration_slope")


def positive_key(signature: Signature, cfg: ModelMonitoringConfig) -> str | None:
    """The monitored score: probability of the positive class, or ``None`` for regression."""
    labels = [str(c) for c in signature.class_labels or []]
    if not labels:
        return None
    if cfg.positive_class is not None and cfg.positive_class in labels:
        return cfg.positive_class
    return labels[1] if len(labels) >= 2 else labels[0]


def _score(p: LoggedPrediction, positive: str | None, labels: list[str]) -> float:
    if positive is None:
        return float(p.outputs.get("value", np.nan))
    probabilities = p.outputs.get("probabilities")
    if isinstance(probabilities, list) and positive in labels:
        return float(probabilities[labels.index(positive)])
    return float("nan")


def _label(outcome: Any, positive: str | None) -> float | None:
    if isinstance(outcome, dict):
        outcome = outcome.get("label", outcome.get("value"))
    if positive is None:
        return float(outcome) if isinstance(outcome, int | float) else None
    if isinstance(outcome, bool):
        return float(outcome)
    if isinstance(outcome, int | float):
        return float(outcome != 0)
    if isinstance(outcome, str):
        return float(outcome == positive)
    return None


def compute(
    store: MonitoringStore,
    registry_store: RegistryStore,
    model: str,
    *,
    window_s: float,
    now: datetime,
) -> dict[str, Any]:
    cfg = store.config(model)
    start, end = now - timedelta(seconds=window_s), now
    window = store.predictions(model, start, end)
    by_version = Counter(p.version for p in window)
    versions: dict[str, Any] = {}
    for version, _ in by_version.most_common():
        rows = [p for p in window if p.version == version]
        signature = Signature.model_validate(registry_store.get_version(model, version).signature)
        labels = [str(c) for c in signature.class_labels or []]
        try:
            reference, _ = store.reference(model, version)
        except Exception:
            versions[str(version)] = {
                "n": len(rows),
                "error": "no reference stored at registration",
            }
            continue
        scores = {}
        if labels:
            for key in reference.get("predictions", {}):
                label = key[2:]
                scores[key] = np.array([_score(p, label, labels) for p in rows])
        else:
            scores["value"] = np.array([_score(p, None, labels) for p in rows])
        drift = window_drift(
            reference, signature.feature_names, [p.inputs for p in rows], scores, cfg
        )
        drift["enough_data"] = len(rows) >= cfg.min_window_n
        versions[str(version)] = drift

    horizon = timedelta(seconds=cfg.outcome_horizon_s)
    m_start, m_end = start - horizon, end - horizon
    matured = store.predictions(model, m_start, m_end) if horizon else window
    perf_rows = []
    task = "regression"
    for p in matured:
        if p.outcome is None:
            continue
        signature = Signature.model_validate(registry_store.get_version(model, p.version).signature)
        labels = [str(c) for c in signature.class_labels or []]
        positive = positive_key(signature, cfg)
        task = "classification" if positive is not None else "regression"
        y = _label(p.outcome, positive)
        if y is None:
            continue
        features = dict(zip(signature.feature_names, p.inputs, strict=False))
        groups = {key: (p.site if key == "site" else features.get(key)) for key in cfg.subgroups}
        perf_rows.append({"y": y, "score": _score(p, positive, labels), "groups": groups})
    live = performance(perf_rows, task=task, threshold=cfg.threshold, subgroups=cfg.subgroups)
    main = versions.get(str(by_version.most_common(1)[0][0])) if by_version else None
    return {
        "model": model,
        "window": {"start": start.isoformat(), "end": end.isoformat(), "n": len(window)},
        "drift": main,
        "versions": versions,
        "performance": {
            "matured_window": {
                "start": m_start.isoformat(),
                "end": m_end.isoformat(),
                "n_predictions": len(matured),
                "n_labelled": len(perf_rows),
                "outcome_horizon_s": cfg.outcome_horizon_s,
            },
            **live,
        },
    }


def metric_value(result: dict[str, Any], metric: str) -> tuple[float | None, int]:
    """``(value, n)`` of a rule metric in a run result (``None`` when not computed)."""
    drift = result.get("drift") or {}
    n_window = int(result["window"]["n"])
    if metric in PERFORMANCE_METRICS:
        overall = result["performance"]["overall"]
        value = overall.get(metric)
        return (float(value) if value is not None else None), int(overall.get("n", 0))
    if ":" in metric:
        kind, feature = metric.split(":", 1)
        entry = drift.get("features", {}).get(feature) or drift.get("predictions", {}).get(feature)
        value = (entry or {}).get(kind)
        return (float(value) if value is not None else None), n_window
    value = (drift.get("summary") or {}).get(metric)
    return (float(value) if value is not None else None), n_window


def evaluate_rules(
    store: MonitoringStore, model: str, result: dict[str, Any], run_id: int, now: datetime
) -> list[dict[str, Any]]:
    """Update streaks, open and resolve alerts; returns the alerts opened by this run."""
    fired: list[dict[str, Any]] = []
    rules = [r for r in store.rules(model) if r.enabled]
    with store.transaction() as conn:
        for rule in rules:
            value, n = metric_value(result, rule.metric)
            if value is None or n < rule.min_n:
                continue  # not enough evidence either way: the streak stands
            if not rule.breached(value):
                store.set_streak(conn, rule.id, 0)
                conn.execute(
                    mon_alerts.update()
                    .where(mon_alerts.c.rule_id == rule.id, mon_alerts.c.resolved_at.is_(None))
                    .values(state="resolved", resolved_at=now)
                )
                continue
            streak = rule.streak + 1
            store.set_streak(conn, rule.id, streak)
            if streak < rule.consecutive or store.open_alert(conn, rule.id) is not None:
                continue
            inserted = conn.execute(
                mon_alerts.insert().values(
                    rule_id=rule.id,
                    model_name=model,
                    metric=rule.metric,
                    value=value,
                    threshold=rule.threshold,
                    n=n,
                    run_id=run_id,
                    state="firing",
                    delivery="pending",
                    attempts=0,
                    fired_at=now,
                )
            )
            alert_id = inserted_id(inserted)
            fired.append(_payload(alert_id, rule, value, n, result, now))
            metrics.ALERTS_FIRED.labels(model, rule.metric).inc()
    return fired


def _payload(
    alert_id: int, rule: AlertRule, value: float, n: int, result: dict[str, Any], now: datetime
) -> dict[str, Any]:
    return {
        "alert_id": alert_id,
        "rule_id": rule.id,
        "model": rule.model_name,
        "metric": rule.metric,
        "value": value,
        "op": rule.op,
        "threshold": rule.threshold,
        "n": n,
        "consecutive": rule.consecutive,
        "window": result["window"],
        "fired_at": now.isoformat(),
        "text": (
            f"{rule.model_name}: {rule.metric} = {value:.4g} {rule.op} {rule.threshold:g} "
            f"(n={n}, {rule.consecutive} consecutive window(s))"
        ),
    }


def deliver(
    url: str,
    payload: dict[str, Any],
    *,
    attempts: int = 4,
    backoff_s: float = 0.5,
    timeout_s: float = 5.0,
) -> tuple[bool, int]:
    """POST ``payload`` as JSON, retrying with exponential backoff; ``(delivered, attempts)``."""
    for attempt in range(1, attempts + 1):
        try:
            response = httpx.post(url, json=payload, timeout=timeout_s)
            if 200 <= response.status_code < 300:
                return True, attempt
            log.warning("alert webhook answered %s (attempt %d)", response.status_code, attempt)
        except httpx.HTTPError as exc:
            log.warning("alert webhook failed: %s (attempt %d)", type(exc).__name__, attempt)
        metrics.WEBHOOK_FAILURES.labels(str(payload.get("model", ""))).inc()
        if attempt < attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    return False, attempts


def run_model(
    store: MonitoringStore,
    registry_store: RegistryStore,
    model: str,
    *,
    window_s: float,
    now: datetime | None = None,
    backoff_s: float = 0.5,
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    # first, so that a run that cannot compute (no reference yet) still enforces retention
    purged = purge_expired(store, model, now=now)
    result = compute(store, registry_store, model, window_s=window_s, now=now)
    start = datetime.fromisoformat(result["window"]["start"])
    run_id = store.add_run(model, start, now, result)
    fired = evaluate_rules(store, model, result, run_id, now)
    url = store.config(model).webhook_url
    pending = fired + [
        a for a in store.alerts(model, open_only=True) if a["delivery"] == "failed" and url
    ]
    for alert in pending:
        payload = alert if "alert_id" in alert else {**alert, "alert_id": alert["id"]}
        payload = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in payload.items()}
        if not url:
            store.set_delivery(int(payload["alert_id"]), "no_webhook", 0)
            continue
        ok, attempts = deliver(url, payload, backoff_s=backoff_s)
        store.set_delivery(int(payload["alert_id"]), "delivered" if ok else "failed", attempts)
    result["run_id"] = run_id
    result["purged"] = None if purged is None else purged.predictions
    result["alerts_fired"] = [a["alert_id"] for a in fired]
    metrics.LAST_RUN.labels(model).set(now.timestamp())
    summary = (result.get("drift") or {}).get("summary") or {}
    metrics.DRIFT_PSI_MAX.labels(model).set(float(summary.get("psi_max") or 0.0))
    metrics.ALERTS_OPEN.labels(model).set(
        sum(1 for a in store.alerts(model, open_only=True) if a["state"] == "firing")
    )
    return result

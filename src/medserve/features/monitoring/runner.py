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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np

from medserve.core import metrics
from medserve.core.errors import NotFoundError
from medserve.core.monitoring_config import ModelMonitoringConfig
from medserve.core.registry.signature import Signature
from medserve.core.store.base import RegistryStore
from medserve.core.store.monitoring import (
    PERFORMANCE_METRICS,
    AlertRule,
    MonitoringStore,
    WindowBatch,
    inserted_id,
)
from medserve.core.store.tables_monitoring import mon_alerts
from medserve.features.monitoring.drift import WindowDrift
from medserve.features.monitoring.performance import LivePerformance
from medserve.features.monitoring.retention import purge_expired

log = logging.getLogger(__name__)

PAGE_ROWS = 32_768  # predictions folded into the drift summaries at a time


def positive_key(signature: Signature, cfg: ModelMonitoringConfig) -> str | None:
    """The monitored score: probability of the positive class, or ``None`` for regression."""
    labels = [str(c) for c in signature.class_labels or []]
    if not labels:
        return None
    if cfg.positive_class is not None and cfg.positive_class in labels:
        return cfg.positive_class
    return labels[1] if len(labels) >= 2 else labels[0]


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


def _column(outputs: dict[str, Any], key: str, n: int) -> np.ndarray:
    values = outputs.get(key)
    if values is None:
        return np.full((n,), np.nan)
    try:
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return np.full((n,), np.nan)


@dataclass
class _Version:
    """What one version's rows are read with, and its drift summaries."""

    signature: Signature
    labels: list[str]
    positive: str | None
    drift: WindowDrift | None
    n: int = 0
    pending: list[tuple[Any, dict[str, np.ndarray], np.ndarray]] = field(default_factory=list)
    pending_rows: int = 0

    def scores(self, batch: WindowBatch) -> dict[str, np.ndarray]:
        """The monitored score columns of a batch: each class probability, or the value."""
        if not self.labels:
            return {"value": _column(batch.outputs, "value", batch.n).reshape(-1)}
        probabilities = _column(batch.outputs, "probabilities", batch.n)
        if probabilities.ndim != 2 or probabilities.shape[1] != len(self.labels):
            return {f"p:{k}": np.full(batch.n, np.nan) for k in self.labels}
        return {f"p:{k}": probabilities[:, i] for i, k in enumerate(self.labels)}

    def score(self, scores: dict[str, np.ndarray], positive: str | None) -> np.ndarray:
        key = "value" if positive is None else f"p:{positive}"
        found = scores.get(key)
        return found if found is not None else np.full(len(next(iter(scores.values()))), np.nan)

    def fold(self, batch: WindowBatch, scores: dict[str, np.ndarray]) -> None:
        """Queue a batch's rows in the window for the drift summaries (folded a page at a
        time: a page of small batches costs the numpy calls of one)."""
        assert self.drift is not None
        width = len(self.signature.inputs)
        missing = np.zeros(width, dtype=np.int64)
        for row, feature, count in batch.missing:
            if feature < width and (batch.keep is None or batch.keep[row]):
                missing[feature] += count
        inputs: Any = batch.inputs
        if batch.keep is not None:
            scores = {k: v[batch.keep] for k, v in scores.items()}
            if isinstance(inputs, np.ndarray):
                inputs = inputs[batch.keep]
            else:
                inputs = [r for r, keep in zip(inputs, batch.keep.tolist(), strict=True) if keep]
        self.pending.append((inputs, scores, missing))
        self.pending_rows += batch.kept
        if self.pending_rows >= PAGE_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending or self.drift is None:
            return
        parts, self.pending, self.pending_rows = self.pending, [], 0
        inputs: Any
        if all(isinstance(p[0], np.ndarray) and p[0].dtype != object for p in parts):
            inputs = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
        else:
            inputs = [
                row
                for p in parts
                for row in (p[0].tolist() if isinstance(p[0], np.ndarray) else p[0])
            ]
        keys = parts[0][1].keys()
        scores = {k: np.concatenate([p[1][k] for p in parts]) for k in keys}
        missing = np.sum([p[2] for p in parts], axis=0)
        self.drift.add(inputs, scores, missing)


def compute(
    store: MonitoringStore,
    registry_store: RegistryStore,
    model: str,
    *,
    window_s: float,
    now: datetime,
) -> dict[str, Any]:
    """Drift of the window ending ``now`` and live performance of the matured window, read
    page by page into fixed-size summaries: memory does not grow with the window."""
    cfg = store.config(model)
    start, end = now - timedelta(seconds=window_s), now
    horizon = timedelta(seconds=cfg.outcome_horizon_s)
    m_start, m_end = start - horizon, end - horizon
    versions: dict[int, _Version] = {}
    errors: dict[int, str] = {}

    def version_of(number: int) -> _Version:
        found = versions.get(number)
        if found is None:
            signature = Signature.model_validate(
                registry_store.get_version(model, number).signature
            )
            labels = [str(c) for c in signature.class_labels or []]
            drift = None
            try:
                reference, _ = store.reference(model, number)
            except NotFoundError:
                errors[number] = "no reference stored at registration"
            else:
                keys = [f"p:{k}" for k in labels] if labels else ["value"]
                drift = WindowDrift(reference, signature.feature_names, keys)
            found = versions[number] = _Version(
                signature, labels, positive_key(signature, cfg), drift
            )
        return found

    live = LivePerformance(cfg.threshold, cfg.subgroups)
    labelled = 0
    for batch in store.window_batches(model, start, end):
        state = version_of(batch.version)
        kept = batch.kept
        if not kept:
            continue
        state.n += kept
        scores = state.scores(batch)
        if state.drift is not None:
            state.fold(batch, scores)
        if not horizon and batch.outcomes:
            labelled += _fold_labelled(live, batch, state, scores, cfg)
    if horizon:
        n_matured = store.count_window(model, m_start, m_end)
        for batch in store.window_batches(model, m_start, m_end, labelled_only=True):
            state = version_of(batch.version)
            labelled += _fold_labelled(live, batch, state, state.scores(batch), cfg)
    else:
        n_matured = sum(v.n for v in versions.values())

    results: dict[str, Any] = {}
    for number, state in sorted(versions.items(), key=lambda kv: -kv[1].n):
        if not state.n:
            continue
        if state.drift is None:
            results[str(number)] = {"n": state.n, "error": errors[number]}
            continue
        state.flush()
        results[str(number)] = state.drift.result(cfg)
    window_n = sum(v.n for v in versions.values())
    main = next(iter(results.values()), None)
    return {
        "model": model,
        "window": {"start": start.isoformat(), "end": end.isoformat(), "n": window_n},
        "drift": main,
        "versions": results,
        "performance": {
            "matured_window": {
                "start": m_start.isoformat(),
                "end": m_end.isoformat(),
                "n_predictions": n_matured,
                "n_labelled": labelled,
                "outcome_horizon_s": cfg.outcome_horizon_s,
            },
            **live.result(),
        },
    }


def _fold_labelled(
    live: LivePerformance,
    batch: WindowBatch,
    state: _Version,
    scores: dict[str, np.ndarray],
    cfg: ModelMonitoringConfig,
) -> int:
    """Add a batch's labelled rows (in the window) to live performance; returns how many."""
    rows, ys = [], []
    for idx, outcome in batch.outcomes.items():
        y = _label(outcome, state.positive)
        if y is not None:
            rows.append(idx)
            ys.append(y)
    if not rows:
        return 0
    picked = np.asarray(rows, dtype=np.int64)
    score = state.score(scores, state.positive)[picked]
    groups: dict[str, list[Any]] = {}
    names = state.signature.feature_names
    for key in cfg.subgroups:
        if key == "site":
            sites = batch.sites()
            groups[key] = [sites[i] for i in rows]
        elif key in names:
            j = names.index(key)
            inputs = batch.inputs
            groups[key] = [
                inputs[i, j] if isinstance(inputs, np.ndarray) else inputs[i][j] for i in rows
            ]
        else:
            groups[key] = [None] * len(rows)
    task = "classification" if state.positive is not None else "regression"
    live.add(task, np.asarray(ys, dtype=np.float64), score, groups)
    return len(rows)


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

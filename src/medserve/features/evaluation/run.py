"""Evaluating a registered version on a labelled file, through the same runtime that serves it.

A survival version is evaluated on time and event columns (concordance, time-dependent AUC and
Brier, calibration against Kaplan-Meier), never on the follow-up time as if it were a regression
target: its served risk score is not a predicted time. A binary version trained at a horizon can
be given the time and event columns instead of a label, and derives the label the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medserve.core.datasets import fingerprint
from medserve.core.errors import InvalidRequestError
from medserve.core.evaluation.evaluate import DEFAULT_MIN_EVENTS, Predictions, evaluate
from medserve.core.evaluation.report import render_report
from medserve.core.evaluation.survival_metrics import horizon_outcome, survival_from_risk
from medserve.core.loaded_model import load_version_locally, matching_class_key
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry
from medserve.core.store.governance import GovernanceStore


def evaluate_version(
    registry: Registry,
    version: ModelVersion,
    frame: pd.DataFrame,
    *,
    label: str | None,
    dataset_name: str,
    subgroups: list[str] | None = None,
    kind: str = "local",
    positive_label: str | None = None,
    threshold: float | None = None,
    min_n: int = 30,
    n_boot: int = 500,
    seed: int = 0,
    actor: str = "unknown",
    time: str | None = None,
    event: str | None = None,
    horizons: list[float] | None = None,
    min_events: int = DEFAULT_MIN_EVENTS,
    split: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str | None]:
    """Evaluate, store against (version, data fingerprint), store the HTML report; returns
    (result, report sha256). ``time``/``event`` default to the training spec's columns.
    ``split`` is a test set's declared provenance (``provenance.declared_test_split``), kept
    with the evaluation for the promotion gate."""

    gov = GovernanceStore(registry.store)
    record = gov.training_run(version.model_name, version.version) or {}
    trained = record.get("spec") or {}
    survival = trained.get("task") == "survival" or version.signature.get("task") == "survival"
    horizon = trained.get("horizon") if not survival else None
    time = time or trained.get("time")
    event = event or trained.get("event")
    if survival or (horizon is not None and label is None):
        if not time or not event:
            raise InvalidRequestError(
                "this version needs --time and --event columns to be evaluated",
                details=[{"field": "time/event", "rule": "required for time-to-event outcomes"}],
            )
        outcome = [time, event]
    elif label is None:
        raise InvalidRequestError("give the outcome column (--label)")
    else:
        outcome = [label]
    missing = [c for c in [*outcome, *(subgroups or [])] if c not in frame]
    if missing:
        raise InvalidRequestError(f"columns not in the data: {', '.join(missing)}")
    model = load_version_locally(registry, version)
    frame = frame.dropna(subset=outcome).reset_index(drop=True)
    excluded = 0
    if not survival and label is None:
        assert time is not None
        assert event is not None
        assert horizon is not None
        frame, excluded, label = _horizon_label(frame, time, event, float(horizon))
    rows = frame[model.signature.feature_names].to_dict(orient="records")
    outputs = model.predict(model.validator.records_to_matrix(rows))
    method = "fixed at 0.5"
    if survival:
        assert time is not None
        assert event is not None
        pred = _survival_predictions(frame, outputs, time, event, record, horizons)
    elif model.is_classifier and model.class_keys is not None:
        keys = [str(k) for k in model.class_keys]
        proba = np.asarray(outputs["probabilities"], dtype=float)
        truth = np.array([_as_key(v, keys) for v in frame[label].tolist()])
        if len(keys) == 2:
            positive = positive_label or record.get("outcome", {}).get("positive_label") or keys[1]
            positive = _as_key(positive, keys)
            if positive not in keys:
                raise InvalidRequestError(f"positive label must be one of {keys}")
            if threshold is None:
                threshold = float(record.get("threshold", {}).get("value", 0.5))
                method = f"from training: {record.get('threshold', {}).get('method', 'default')}"
            else:
                method = f"fixed at {threshold:g} on the command line"
            pred = Predictions(
                "binary",
                (truth == positive).astype(float),
                proba[:, keys.index(positive)],
                positive_label=positive,
            )
        else:
            unknown = sorted(set(truth) - set(keys))
            if unknown:
                raise InvalidRequestError(f"labels not among the model's classes: {unknown[:5]}")
            y = np.array([keys.index(v) for v in truth])
            pred = Predictions("multiclass", y, proba, class_names=keys)
    else:
        assert label is not None
        value = np.asarray(outputs["value"], dtype=float).reshape(len(frame), -1)[:, 0]
        pred = Predictions("regression", _numbers(frame, label), value)
    result = evaluate(
        pred,
        threshold=0.5 if threshold is None else threshold,
        threshold_method=method,
        subgroups={c: frame[c].astype(str).to_numpy() for c in subgroups or []},
        min_n=min_n,
        n_boot=n_boot,
        seed=seed,
        min_events=min_events,
    )
    sha = fingerprint(frame)
    result["dataset"] = {"kind": kind, "sha256": sha, "rows": len(frame), "name": dataset_name}
    if split is not None:
        result["dataset"]["split"] = split
    if horizon is not None and not survival and excluded:
        result["dataset"]["excluded_censored_before_horizon"] = excluded
    report = render_report(
        result,
        title=f"{version.model_name} v{version.version}: {kind} evaluation",
        context={"data": dataset_name, "data sha256": sha},
    )
    report_sha = registry.artifacts.put_bytes(report.encode())
    gov.save_evaluation(
        version.model_name,
        version.version,
        dataset_sha256=sha,
        dataset_name=dataset_name,
        kind=kind,
        result=result,
        report_sha256=report_sha,
        created_by=actor,
    )
    return result, report_sha


def _as_key(value: Any, keys: list[str]) -> str:
    """``value`` as the model's class key it equals (see ``matching_class_key``), else as text."""
    return matching_class_key(value, keys) or str(value)


def _numbers(frame: pd.DataFrame, column: str) -> np.ndarray:
    try:
        return np.asarray(frame[column].to_numpy(dtype=float))
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(
            f"column {column!r} must be numeric, but holds {frame[column].dtype} values",
            details=[{"column": column, "rule": "numeric"}],
        ) from exc


def _events(frame: pd.DataFrame, column: str) -> np.ndarray:
    values = _numbers(frame, column)
    if not np.isin(values, (0.0, 1.0)).all():
        raise InvalidRequestError(
            f"column {column!r} must hold 0/1: 1 = the event happened",
            details=[{"column": column, "rule": "0 or 1"}],
        )
    return values.astype(int)


def _horizon_label(
    frame: pd.DataFrame, time: str, event: str, horizon: float
) -> tuple[pd.DataFrame, int, str]:
    """The training rule: event by the horizon is 1, followed past it is 0, censored before it
    is unknown and excluded (counted)."""
    t, e = _numbers(frame, time), _events(frame, event)
    unknown, by_horizon = horizon_outcome(t, e, horizon)
    kept = frame.loc[~unknown].copy()
    label = f"{event}_by_{horizon:g}"
    kept[label] = np.where(by_horizon, "1", "0")
    return kept.reset_index(drop=True), int(unknown.sum()), label


def _survival_predictions(
    frame: pd.DataFrame,
    outputs: dict[str, Any],
    time: str,
    event: str,
    record: dict[str, Any],
    horizons: list[float] | None,
) -> Predictions:
    risk = np.asarray(outputs["value"], dtype=float).reshape(len(frame), -1)[:, 0]
    info = record.get("survival") or {}
    chosen = list(horizons or info.get("horizons") or [])
    baseline = info.get("baseline")
    surv = survival_from_risk(risk, baseline, chosen) if baseline and chosen else {}
    return Predictions(
        "survival", _numbers(frame, time), risk, event=_events(frame, event), survival_at=surv
    )

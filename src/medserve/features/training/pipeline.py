"""spec -> data -> patient-grouped split -> CV over algorithms -> fit -> evaluate -> register.

Everything needed to reproduce a run is recorded with the version: the spec, the data
fingerprint, row and patient counts (never identifiers), seeds, library versions, the CV table,
how the operating threshold was chosen, and whether the registered model is the evaluated fit.
"""

from __future__ import annotations

import math
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from sklearn.base import clone

from medserve.core.datasets import (
    add_age_bands,
    add_synthetic_subgroups,
    fingerprint,
    load_data,
)
from medserve.core.errors import InvalidRequestError
from medserve.core.evaluation.evaluate import Predictions, evaluate, scalar_metrics
from medserve.core.evaluation.report import render_report
from medserve.core.evaluation.survival_metrics import horizon_outcome
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry, _versions_of, current_user
from medserve.core.registry.signature import Signature, infer_signature
from medserve.core.store.governance import GovernanceStore
from medserve.features.training import algorithms as algos
from medserve.features.training.spec import LOWER_IS_BETTER, TrainingSpec
from medserve.features.training.split import Split, cv_folds, patient_split
from medserve.features.training.survival import CoxConvergenceError, make_survival


@dataclass(frozen=True)
class TrainingResult:
    version: ModelVersion
    evaluation: dict[str, Any]
    record: dict[str, Any]
    report_sha256: str | None


@dataclass
class _Data:
    frame: pd.DataFrame
    X: pd.DataFrame
    y: np.ndarray  # labels as given (classification), values, or survival time
    y_eval: np.ndarray  # binary 0/1, class index, value, or time
    event: np.ndarray | None
    groups: np.ndarray
    classes: list[Any] | None
    positive: Any


def _numeric_column(frame: pd.DataFrame, column: str, field: str) -> np.ndarray:
    """A column the spec needs as numbers, or a spec error naming it (never its values:
    they may identify a patient)."""
    try:
        return np.asarray(frame[column].to_numpy(dtype=float))
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(
            f"{field}: column {column!r} must be numeric, but holds {frame[column].dtype} values",
            details=[{"field": field, "column": column, "rule": "numeric"}],
        ) from exc


def _event_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    values = _numeric_column(frame, column, "event")
    if not np.isin(values, (0.0, 1.0)).all():
        raise InvalidRequestError(
            f"event: column {column!r} must hold 0/1 (or false/true): 1 = the event happened",
            details=[{"field": "event", "column": column, "rule": "0 or 1"}],
        )
    return values.astype(int)


def _derive_horizon_label(
    spec: TrainingSpec, frame: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """'Event by the horizon' from time and event. A patient censored before the horizon has
    an unknown label; treating them as event-free would bias risks down, so they are
    excluded and counted (TRIPOD+AI 5c, 20a)."""
    assert spec.horizon is not None
    assert spec.time
    assert spec.event
    label = spec.label_column
    assert label is not None
    if label in frame:
        raise InvalidRequestError(
            f"horizon: the derived label column {label!r} already exists in the data",
            details=[{"field": "horizon", "column": label, "rule": "derived column name is free"}],
        )
    time = _numeric_column(frame, spec.time, "time")
    event = _event_column(frame, spec.event)
    unknown, by_horizon = horizon_outcome(time, event, spec.horizon)
    kept = frame.loc[~unknown].copy()
    kept[label] = by_horizon.astype(int)
    info = {
        "horizon": spec.horizon,
        "time": spec.time,
        "event": spec.event,
        "label": label,
        "rule": f"1 = {spec.event} by {spec.horizon:g} ({spec.time} <= {spec.horizon:g}); "
        f"0 = followed past {spec.horizon:g} without it (an event after it counts as 0)",
        "rows_with_outcome": len(frame),
        "excluded_censored_before_horizon": int(unknown.sum()),
        "events_by_horizon": int(by_horizon.sum()),
        "event_free_at_horizon": int((~by_horizon).sum()),
    }
    return kept.reset_index(drop=True), info


def _match_label(wanted: Any, classes: list[Any]) -> Any:
    """The class equal to ``wanted``: by value, as text, or as a number (1 == 1.0 == '1'),
    since YAML, CSV readers and pandas disagree on what a 1 is."""
    for c in classes:
        if c == wanted or str(c) == str(wanted):
            return c
    try:
        number = float(wanted)
    except (TypeError, ValueError):
        return None
    for c in classes:
        try:
            if float(c) == number:
                return c
        except (TypeError, ValueError):
            continue
    return None


def _prepare(spec: TrainingSpec, frame: pd.DataFrame) -> tuple[_Data, dict[str, Any]]:
    frame = frame.copy()
    if spec.age_bands:
        add_age_bands(frame, spec.age_bands.column, spec.age_bands.edges, spec.age_bands.name)
    if spec.synthetic_subgroups:
        add_synthetic_subgroups(frame, list(spec.synthetic_subgroups), spec.seed)
    outcome = [c for c in (spec.target, spec.time, spec.event) if c]
    named = [*outcome, *([spec.patient_id] if spec.patient_id else []), *spec.subgroup_columns]
    declared = [*spec.features.categorical, *(spec.features.numeric or []), *spec.features.include]
    missing_cols = [c for c in named + declared if c not in frame]
    if missing_cols:
        raise InvalidRequestError(f"columns not in the data: {', '.join(missing_cols)}")
    for column in (spec.time, spec.event, spec.patient_id):
        if column and column in declared:
            raise InvalidRequestError(
                f"features: {column!r} is an outcome or identifier column and cannot be an input",
                details=[{"field": "features", "column": column, "rule": "not an outcome"}],
            )
    # A subgroup column is evaluation-only unless the spec also declares it as an input.
    excluded = (set(named) | set(spec.features.drop) | set(spec.features.categorical)) - set(
        spec.features.include
    )
    numeric = spec.features.numeric or [
        c for c in frame.columns if c not in excluded or c in spec.features.include
    ]
    for column in numeric:
        if not (
            pd.api.types.is_numeric_dtype(frame[column])
            or pd.api.types.is_bool_dtype(frame[column])
        ):
            raise InvalidRequestError(
                f"features: column {column!r} holds {frame[column].dtype} values, not numbers, "
                "so it cannot be a numeric input: list it under features.categorical, "
                "features.drop, or as patient_id if it identifies patients",
                details=[{"field": "features.numeric", "column": column, "rule": "numeric"}],
            )
    features = [*numeric, *[c for c in spec.features.categorical if c not in numeric]]
    if not features:
        raise InvalidRequestError("no feature columns left after exclusions")
    rows_in = len(frame)
    frame = frame.dropna(subset=outcome)
    dropped_outcome = rows_in - len(frame)
    horizon_info: dict[str, Any] | None = None
    if spec.horizon is not None:
        frame, horizon_info = _derive_horizon_label(spec, frame)
    label = spec.label_column
    nan_cols = [c for c in features if frame[c].isna().any()]
    dropped_missing = 0
    if nan_cols and spec.missing == "reject":
        raise InvalidRequestError(
            f"missing values in {', '.join(nan_cols)} and the spec's missing policy is 'reject'"
        )
    if nan_cols and spec.missing == "drop_rows":
        before = len(frame)
        frame = frame.dropna(subset=features)
        dropped_missing = before - len(frame)
    frame = frame.reset_index(drop=True)
    classes: list[Any] | None = None
    positive: Any = None
    event = None
    if spec.task == "survival":
        assert spec.time
        assert spec.event
        y = _numeric_column(frame, spec.time, "time")
        y_eval = y
        event = _event_column(frame, spec.event)
    elif spec.task == "regression":
        assert label is not None
        y = _numeric_column(frame, label, "target")
        y_eval = y
    else:
        assert label is not None
        y = frame[label].to_numpy()
        classes = sorted(pd.unique(y).tolist(), key=str)
        if spec.task == "binary":
            if len(classes) != 2:
                raise InvalidRequestError(f"a binary target needs 2 classes, found {len(classes)}")
            wanted = 1 if spec.horizon is not None else spec.positive_label
            positive = None if wanted is None else _match_label(wanted, classes)
            if wanted is None and all(_match_label(v, classes) is not None for v in (0, 1)):
                positive = _match_label(1, classes)
            if positive is None:
                raise InvalidRequestError(
                    f"positive_label: set it to one of {[str(c) for c in classes]}"
                    + (f" (got {wanted!r})" if wanted is not None else ""),
                    details=[{"field": "positive_label", "column": label, "rule": "a class"}],
                )
            y_eval = (y == positive).astype(float)
        else:
            y_eval = np.array([classes.index(v) for v in y])
    groups = (
        frame[spec.patient_id].astype(str).to_numpy()
        if spec.patient_id
        else np.arange(len(frame)).astype(str)
    )
    data = _Data(frame, frame[features], y, y_eval, event, groups, classes, positive)
    info: dict[str, Any] = {
        "rows": rows_in,
        "rows_used": len(frame),
        "rows_dropped_missing_outcome": dropped_outcome,
        "rows_dropped_missing_features": dropped_missing,
        "features_with_missing": nan_cols,
        "numeric_features": numeric,
        "categorical_features": list(spec.features.categorical),
        "subgroups_also_inputs": [c for c in spec.subgroup_columns if c in features],
    }
    if horizon_info is not None:
        info["rows_excluded_censored_before_horizon"] = horizon_info[
            "excluded_censored_before_horizon"
        ]
        info["horizon_label"] = horizon_info
    return data, info


# -- fitting and scoring ------------------------------------------------------------------
def _fit(est: Any, name: str, spec: TrainingSpec, data: _Data, idx: np.ndarray) -> Any:
    X = data.X.iloc[idx]
    if spec.task == "survival":
        assert data.event is not None
        return est.fit(X, data.y[idx], data.event[idx])
    if name in algos.BOOSTERS and spec.task != "regression":
        target = data.y_eval[idx].astype(int)
        weights = None
        if spec.class_weight == "balanced" and name == "xgboost":
            counts = np.bincount(target)
            weights = len(target) / (len(counts) * counts[target])
        return est.fit(X, target, sample_weight=weights)
    return est.fit(X, data.y[idx])


def _score(est: Any, name: str, spec: TrainingSpec, data: _Data, idx: np.ndarray) -> np.ndarray:
    X = data.X.iloc[idx]
    if spec.task == "survival":
        return np.asarray(est.risk(X), dtype=float)
    if spec.task == "regression":
        return np.asarray(est.predict(X), dtype=float)
    proba = np.asarray(est.predict_proba(X), dtype=float)
    if name in algos.BOOSTERS:
        return proba[:, 1] if spec.task == "binary" else proba
    order = [list(est.classes_).index(c) for c in (data.classes or [])]
    proba = proba[:, order]
    if spec.task == "binary":
        assert data.classes is not None
        return proba[:, data.classes.index(data.positive)]
    return proba


def _predictions(
    spec: TrainingSpec, data: _Data, idx: np.ndarray, score: np.ndarray, surv: dict[float, Any]
) -> Predictions:
    return Predictions(
        task=spec.task,
        y=data.y_eval[idx],
        score=score,
        event=None if data.event is None else data.event[idx],
        survival_at=surv,
        class_names=[str(c) for c in data.classes] if data.classes else None,
        positive_label=None if data.positive is None else str(data.positive),
    )


def _new(name: str, spec: TrainingSpec, data: _Data, estimator: Any) -> Any:
    if estimator is not None:
        return clone(estimator)
    if spec.task == "survival":
        return make_survival(name, spec.seed)
    return algos.build(
        name,
        spec.task,
        numeric=list(data.X.columns.difference(spec.features.categorical, sort=False)),
        categorical=list(spec.features.categorical),
        seed=spec.seed,
        balanced=spec.class_weight == "balanced",
        impute=spec.missing == "impute",
    )


def _fit_final(name: str, spec: TrainingSpec, data: _Data, estimator: Any, idx: np.ndarray) -> Any:
    model = _new(name, spec, data, estimator)
    try:
        return _fit(model, name, spec, data, idx)
    except CoxConvergenceError as exc:
        raise InvalidRequestError(
            f"algorithms: {name} could not be fit on the training rows: {exc}",
            details=[{"field": "algorithms", "rule": "the model must converge"}],
        ) from exc


def choose_threshold(spec: TrainingSpec, y: np.ndarray, p: np.ndarray) -> tuple[float, str]:
    # lazy import (heavy: scikit-learn, kept off the serving path)
    from sklearn.metrics import roc_curve  # noqa: PLC0415

    how = spec.threshold
    source = f"on out-of-fold training predictions ({spec.cv_folds}-fold grouped CV)"
    if how.method == "fixed":
        return how.value, f"fixed at {how.value:g} by the spec"
    fpr, tpr, thresholds = roc_curve(y, p)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if how.method == "youden":
        k = int(np.argmax(tpr - fpr))
        return float(thresholds[k]), f"maximum Youden J (sensitivity + specificity - 1) {source}"
    ok = np.flatnonzero(tpr >= how.value)
    k = int(ok[0]) if len(ok) else len(thresholds) - 1
    return (
        float(thresholds[k]),
        f"highest threshold with sensitivity >= {how.value:g} {source}",
    )


# -- the run ------------------------------------------------------------------------------
def train(
    spec: TrainingSpec,
    registry: Registry,
    *,
    frame: pd.DataFrame | None = None,
    base: Path | None = None,
    spec_text: str | None = None,
    estimator: Any = None,
    signature: Signature | None = None,
    console: Console | None = None,
    created_by: str | None = None,
    tags: dict[str, str] | None = None,
    split: Split | None = None,
) -> TrainingResult:
    """Run ``spec`` and register the result. ``estimator`` (Python API) replaces the spec's
    algorithm list with one given scikit-learn estimator; ``signature`` overrides inference;
    ``split`` replaces the patient-grouped hold-out (trajectories split by patient and time, row
    indices of ``frame``, which must then need no row dropped)."""
    actor = created_by or current_user()
    raw = frame if frame is not None else load_data(spec.data, base)
    data_sha = fingerprint(raw)
    data, data_info = _prepare(spec, raw)
    stratify = data.y_eval if spec.task in ("binary", "multiclass") else None
    if split is not None and len(data.frame) != len(raw):
        raise InvalidRequestError("a given split needs every row kept (no missing outcome)")
    split = split or patient_split(
        data.groups,
        test_size=spec.test_size,
        seed=spec.seed,
        stratify=None if stratify is None else stratify.astype(int),
        grouped_by=spec.patient_id,
    )
    train_idx, test_idx = split.train, split.test
    sub_strat = None if stratify is None else stratify[train_idx].astype(int)
    folds = cv_folds(spec.cv_folds, data.groups[train_idx], sub_strat, spec.seed)
    names = [f"custom:{type(estimator).__name__}"] if estimator is not None else spec.algorithms
    metric = spec.metric
    lower = metric in LOWER_IS_BETTER
    cv_rows: list[dict[str, Any]] = []
    oof: dict[str, np.ndarray] = {}
    progress = (
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=False,
        )
        if console is not None
        else None
    )
    with progress if progress is not None else nullcontext():
        task_id = (
            progress.add_task(f"cross-validating ({metric})", total=len(names) * len(folds))
            if progress is not None
            else None
        )
        for name in names:
            scores: list[float] = []
            convergence: list[dict[str, Any]] = []
            out: np.ndarray | None = None
            for fold, (fit_idx, val_idx) in enumerate(folds, 1):
                model = _new(name, spec, data, estimator)
                try:
                    _fit(model, name, spec, data, train_idx[fit_idx])
                except CoxConvergenceError as exc:
                    # No usable coefficients: the fold has no score (not a near-0.5 one).
                    convergence.append({"fold": fold, "outcome": "failed", "detail": str(exc)})
                    scores.append(math.nan)
                    if progress is not None and task_id is not None:
                        progress.advance(task_id)
                    continue
                if getattr(model, "convergence", None):
                    convergence.append(
                        {
                            "fold": fold,
                            "outcome": f"converged with penalizer {model.penalizer:g}",
                            "detail": "; ".join(model.convergence),
                        }
                    )
                s = _score(model, name, spec, data, train_idx[val_idx])
                if out is None:
                    out = np.zeros((len(train_idx), *s.shape[1:]))
                out[val_idx] = s
                value = scalar_metrics(
                    _predictions(spec, data, train_idx[val_idx], s, {}), 0.5
                ).get(metric, math.nan)
                scores.append(float(value))
                if progress is not None and task_id is not None:
                    progress.advance(task_id)
            if out is not None:
                oof[name] = out
            finite = [v for v in scores if math.isfinite(v)]
            row: dict[str, Any] = {
                "algorithm": name,
                "mean": float(np.mean(finite)) if finite else None,
                "sd": float(np.std(finite)) if finite else None,
                "folds": [round(v, 6) if math.isfinite(v) else None for v in scores],
            }
            if convergence:
                row["convergence"] = convergence
                row["failed_folds"] = sum(c["outcome"] == "failed" for c in convergence)
            cv_rows.append(row)
    ranked = [r for r in cv_rows if r["mean"] is not None]
    # An algorithm that failed to converge in a fold is scored on fewer folds than the others:
    # it is chosen only when nothing fit every fold.
    clean = [r for r in ranked if not r.get("failed_folds")]
    ranked = clean or ranked
    if not ranked:
        raise InvalidRequestError(f"no algorithm produced a finite {metric} in cross-validation")
    best_row = (min if lower else max)(ranked, key=lambda r: r["mean"])
    best = str(best_row["algorithm"])
    threshold, threshold_method = 0.5, "not applicable"
    if spec.task == "binary":
        threshold, threshold_method = choose_threshold(spec, data.y_eval[train_idx], oof[best])
    elif spec.task == "multiclass":
        threshold_method = "highest predicted probability"

    dev = _fit_final(best, spec, data, estimator, train_idx)
    test_score = _score(dev, best, spec, data, test_idx)
    horizons = list(spec.evaluation.horizons)
    if spec.task == "survival" and not horizons:
        event_times = (
            data.y[train_idx][data.event[train_idx] == 1] if data.event is not None else []
        )
        horizons = [float(np.quantile(event_times, q)) for q in (0.25, 0.5, 0.75)]
    surv = dev.survival_at(data.X.iloc[test_idx], horizons) if spec.task == "survival" else {}
    test_frame = data.frame.iloc[test_idx]
    result = evaluate(
        _predictions(spec, data, test_idx, test_score, surv),
        threshold=threshold,
        threshold_method=threshold_method,
        subgroups={c: test_frame[c].astype(str).to_numpy() for c in spec.subgroup_columns},
        min_n=spec.evaluation.min_n,
        n_boot=spec.evaluation.bootstrap,
        seed=spec.seed,
        decision_thresholds=spec.evaluation.decision_thresholds,
        synthetic_subgroups=[f"synthetic_{s}" for s in spec.synthetic_subgroups],
        min_events=spec.evaluation.min_events,
    )
    result["dataset"] = {"kind": "held-out test split", "sha256": data_sha, "rows": len(test_idx)}
    warnings_ = _calibration_warnings(spec, result)

    final = dev
    if spec.final_fit == "all":
        final = _fit_final(best, spec, data, estimator, np.arange(len(data.frame)))

    sig = signature or infer_signature(data.X, range_margin=spec.range_margin)
    version = _register(spec, registry, final, best, data, sig, actor, tags)
    if spec.task == "survival":
        # The runtime serves a risk score as a regressor would; the signature says what it is.
        survival_sig = {**version.signature, "task": "survival"}
        version = registry.store.update_version(
            spec.name, version.version, signature=survival_sig, actor=actor
        )

    record: dict[str, Any] = {
        "spec": spec.model_dump(mode="json"),
        "data": {"source": spec.data, "sha256": data_sha, **data_info},
        "subgroups": spec.subgroup_columns,
        "synthetic_subgroups": [f"synthetic_{s}" for s in spec.synthetic_subgroups],
        "split": split.record,
        "cv": {"folds": len(folds), "metric": metric, "results": cv_rows, "selected": best},
        "algorithm": {
            "name": best,
            "description": best_row["algorithm"]
            if not hasattr(final, "description")
            else final.description(),
            "estimator": repr(final)[:1000],
            "class_weight": algos.class_weight_note(best, spec.class_weight == "balanced")
            if spec.task in ("binary", "multiclass")
            else "not applicable",
        },
        "threshold": {"value": threshold, "method": threshold_method},
        "outcome": _outcome_summary(spec, data, train_idx, test_idx),
        "warnings": warnings_,
        "final_fit": (
            "the registered model is the evaluated fit (training split only)"
            if spec.final_fit == "train"
            else "the registered model was refit on all rows after internal validation; "
            "the reported performance is that of the same procedure fit on the training split "
            "and tested on held-out patients"
        ),
        "seed": spec.seed,
        "library_versions": _versions_of(
            "scikit-learn", "numpy", "pandas", "lifelines", "xgboost", "lightgbm"
        ),
        "created_by": actor,
    }
    not_converged = {r["algorithm"]: r["convergence"] for r in cv_rows if r.get("convergence")}
    if not_converged:
        record["convergence"] = not_converged
        for name, notes in not_converged.items():
            failed = sum(n["outcome"] == "failed" for n in notes)
            warnings_.append(
                f"{name} did not converge at the default penalizer in {len(notes)} of "
                f"{len(folds)} CV folds ({failed} failed even with a stronger penalty"
                + (": it was not eligible for selection" if failed and name != best else "")
                + ")"
            )
    final_notes = getattr(final, "convergence", None)
    if final_notes:
        warnings_.append(
            f"the registered {best} converged only with penalizer {final.penalizer:g}: "
            + "; ".join(final_notes)
        )
    if spec.task == "survival":
        coef, times, cumhaz = final.baseline()
        record["survival"] = {
            "horizons": horizons,
            "served_output": "risk score (higher = earlier event)",
            "baseline": _thin_baseline(coef, times, cumhaz, best),
        }
    text = spec_text if spec_text is not None else yaml.safe_dump(spec.model_dump(mode="json"))
    gov = GovernanceStore(registry.store)
    gov.save_training_run(spec.name, version.version, record, text, actor=actor)
    report_sha = None
    try:
        html = render_report(
            result,
            title=f"{spec.name} v{version.version}: held-out test evaluation",
            context={"data sha256": data_sha, "algorithm": best},
        )
        report_sha = registry.artifacts.put_bytes(html.encode())
    except InvalidRequestError:
        report_sha = None  # no matplotlib: metrics are still stored
    gov.save_evaluation(
        spec.name,
        version.version,
        dataset_sha256=data_sha,
        dataset_name=f"{spec.data} (held-out test split)",
        kind="test",
        result=result,
        report_sha256=report_sha,
        created_by=actor,
    )
    if spec.acceptance:
        gov.save_criteria(spec.name, version.version, list(spec.acceptance), actor)
    if spec.card:
        gov.save_card(spec.name, version.version, dict(spec.card), actor)
    return TrainingResult(version, result, record, report_sha)


def _calibration_warnings(spec: TrainingSpec, result: dict[str, Any]) -> list[str]:
    """Reweighting classes shifts every predicted risk towards the minority class: say so when
    the test split shows it (the 95% CI of calibration-in-the-large excludes 0)."""
    if spec.task != "binary" or spec.class_weight != "balanced":
        return []
    entry = result.get("metrics", {}).get("calibration_intercept") or {}
    low, high = entry.get("ci_low"), entry.get("ci_high")
    if low is None or high is None or low <= 0 <= high:
        return []
    direction = "over" if high < 0 else "under"
    return [
        f"class_weight: balanced degraded calibration: the calibration intercept on the test "
        f"split is {entry['value']:.3f} (95% CI {low:.3f} to {high:.3f}), which excludes 0; "
        f"predicted risks {direction}estimate the observed risk and are not absolute "
        "probabilities. Use class_weight: none, or recalibrate before using them as risks."
    ]


def _thin_baseline(coef: float, times: np.ndarray, cumhaz: np.ndarray, name: str) -> dict[str, Any]:
    """The baseline cumulative hazard at the times it changes (a step function)."""
    keep = np.concatenate([[True], np.diff(cumhaz) != 0]) if len(cumhaz) else np.array([], bool)
    return {
        "coefficient": coef,
        "times": [float(t) for t in times[keep]],
        "cumulative_hazard": [float(h) for h in cumhaz[keep]],
        "method": "lifelines Breslow baseline of the Cox model"
        if name == "cox_ph"
        else "Breslow-Cox model of the training outcomes on the forest's risk score",
    }


def _outcome_summary(
    spec: TrainingSpec, data: _Data, train_idx: np.ndarray, test_idx: np.ndarray
) -> dict[str, Any]:
    if spec.task == "binary":
        summary: dict[str, Any] = {
            "positive_label": str(data.positive),
            "prevalence_train": float(data.y_eval[train_idx].mean()),
            "prevalence_test": float(data.y_eval[test_idx].mean()),
        }
        if spec.horizon is not None:
            summary.update(
                label=spec.label_column, horizon=spec.horizon, time=spec.time, event=spec.event
            )
        return summary
    if spec.task == "survival" and data.event is not None:
        return {
            "time": spec.time,
            "event": spec.event,
            "events_train": int(data.event[train_idx].sum()),
            "events_test": int(data.event[test_idx].sum()),
            "served_output": "risk score (higher = earlier event)",
        }
    if spec.task == "multiclass":
        return {"classes": [str(c) for c in data.classes or []]}
    return {"mean_train": float(data.y[train_idx].mean())}


def _register(
    spec: TrainingSpec,
    registry: Registry,
    model: Any,
    name: str,
    data: _Data,
    sig: Signature,
    actor: str,
    tags: dict[str, str] | None,
) -> ModelVersion:
    all_tags = {"trained_by": "medserve train", "algorithm": name, **(tags or {})}
    sample = data.X
    common: dict[str, Any] = {
        "sample": sample,
        "signature": sig,
        "description": spec.description,
        "tags": all_tags,
        "created_by": actor,
    }
    if spec.task == "survival":
        return registry.register(spec.name, model.serving_estimator(sample), **common)
    if name in algos.BOOSTERS:
        with tempfile.TemporaryDirectory() as tmp:
            if name == "xgboost":
                path = Path(tmp) / "model.json"
                model.get_booster().save_model(str(path))
            else:
                path = Path(tmp) / "model.txt"
                model.booster_.save_model(str(path))
            return registry.register(spec.name, path, **common)
    return registry.register(spec.name, model, **common)

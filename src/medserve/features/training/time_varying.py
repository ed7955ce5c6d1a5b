"""Survival with time-varying covariates: lifelines' CoxTimeVaryingFitter, evaluated by
landmarking, registered as the risk score it serves.

Training data is long format (one row per patient and interval ``(start, stop]`` over which the
covariates are constant; ``event`` on a patient's last interval). The default data set is the
one lifelines ships that fits: ``load_stanford_heart_transplants()`` (172 rows, 103 patients,
``transplant`` switching from 0 to 1 during follow-up).

Such a model has no survival function per patient (it would need the covariates' future), so it
is evaluated by **landmarking** (``core/evaluation/landmark.py``): at each landmark ``s``, the
patients still at risk, their covariates known at ``s``, and concordance, AUC and Brier at
``s + h``. Predictions are out of fold (patient-grouped K-fold: each patient is scored by a model
that never saw them); the predicted probability of no event in ``(s, s + h]`` holds the
covariates at their ``s`` value (the landmark approximation) with the Breslow baseline hazard.
The registered version serves the log partial hazard (a linear score, ONNX) of the covariates
known at the time of the request, with the baseline recorded to turn it into a probability.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medserve.core.datasets import fingerprint
from medserve.core.errors import InvalidRequestError
from medserve.core.evaluation.landmark import Landmark, at_landmark, landmark_metrics
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry, _versions_of, current_user
from medserve.core.registry.signature import infer_signature
from medserve.core.store.governance import GovernanceStore
from medserve.features.training.spec import invalid_spec

METHOD = (
    "time-varying Cox (lifelines CoxTimeVaryingFitter, long format); evaluated by landmarking: "
    "at each landmark s, the patients still at risk at s with the covariates known at s, "
    "scored out of fold (patient-grouped K-fold), concordance, cumulative/dynamic AUC and the "
    "Brier score at s + h (IPCW); the predicted probability holds the covariates at their "
    "value at s"
)
STANFORD = "lifelines:stanford_heart_transplants"


class LongFormat(BaseModel):
    """The ``time_varying:`` block of a spec: the long-format columns and the landmarking."""

    model_config = ConfigDict(extra="forbid")

    id: str = "id"
    start: str = "start"
    stop: str = "stop"
    event: str = "event"
    covariates: list[str] = Field(default_factory=lambda: ["age", "year", "surgery", "transplant"])
    landmarks: list[float] = Field(default_factory=lambda: [30.0, 90.0, 180.0], min_length=1)
    horizon: float = Field(default=365.0, gt=0)
    folds: int = Field(default=5, ge=2, le=20)
    penalizer: float = Field(default=0.01, ge=0)


class TimeVaryingSpec(BaseModel):
    """A spec for ``medserve train``: ``data`` is ``lifelines:stanford_heart_transplants`` or a
    long-format CSV (relative to the spec file)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    data: str = STANFORD
    time_varying: LongFormat = Field(default_factory=LongFormat)
    seed: int = 42
    card: dict[str, Any] = Field(default_factory=dict)


def load_time_varying_spec(path: Path) -> tuple[TimeVaryingSpec, Path]:
    try:
        raw = yaml.safe_load(path.read_text())
        return TimeVaryingSpec.model_validate(raw), path.parent
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidRequestError(f"cannot read the spec {path}: {exc}") from exc
    except ValidationError as exc:
        raise invalid_spec("time-varying spec", exc) from exc


def train_time_varying_spec(
    spec: TimeVaryingSpec, registry: Registry, base: Path | None = None
) -> TimeVaryingResult:
    """Run a time-varying spec: read the data, name its columns, then :func:`train_time_varying`."""
    tv = spec.time_varying
    frame = None
    if spec.data != STANFORD:
        source = (base or Path.cwd()) / spec.data
        try:
            raw = pd.read_csv(source)
        except OSError as exc:
            raise InvalidRequestError(f"data: cannot read {spec.data}: {exc}") from exc
        needed = [tv.id, tv.start, tv.stop, tv.event, *tv.covariates]
        absent = [c for c in needed if c not in raw]
        if absent:
            raise InvalidRequestError(f"columns not in the data: {', '.join(absent)}")
        frame = raw[needed].rename(
            columns={tv.id: "id", tv.start: "start", tv.stop: "stop", tv.event: "event"}
        )
    result = train_time_varying(
        registry,
        name=spec.name,
        frame=frame,
        covariates=tv.covariates,
        landmarks=tv.landmarks,
        horizon=tv.horizon,
        folds=tv.folds,
        seed=spec.seed,
        penalizer=tv.penalizer,
    )
    if spec.card:
        gov = GovernanceStore(registry.store)
        statements = {**gov.card(spec.name, result.version.version), **spec.card}
        gov.save_card(spec.name, result.version.version, statements, current_user())
    return result


@dataclass(frozen=True)
class TimeVaryingResult:
    version: ModelVersion
    evaluation: dict[str, Any]
    record: dict[str, Any]


def _fit(frame: pd.DataFrame, covariates: list[str], penalizer: float) -> Any:
    from lifelines import CoxTimeVaryingFitter  # noqa: PLC0415 (heavy: lifelines)

    fitter = CoxTimeVaryingFitter(penalizer=penalizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitter.fit(
            frame[["id", "start", "stop", "event", *covariates]],
            id_col="id",
            event_col="event",
            start_col="start",
            stop_col="stop",
        )
    return fitter


def _baseline_at(fitter: Any, t: float) -> float:
    cumulative = fitter.baseline_cumulative_hazard_.iloc[:, 0]
    k = int(np.searchsorted(cumulative.index.to_numpy(dtype=float), t, side="right")) - 1
    return float(cumulative.iloc[k]) if k >= 0 else 0.0


def landmark_evaluation(
    frame: pd.DataFrame,
    covariates: list[str],
    landmarks: list[float],
    horizon: float,
    folds: int = 5,
    seed: int = 42,
    penalizer: float = 0.01,
) -> dict[str, Any]:
    """Out-of-fold landmark metrics (see the module docstring)."""
    ids = frame["id"].to_numpy()
    patients = np.unique(ids)
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(patients.tolist(), rng.permutation(len(patients)) % folds, strict=True))
    fold = np.array([fold_of[p] for p in ids.tolist()])
    start = frame["start"].to_numpy(dtype=float)
    stop = frame["stop"].to_numpy(dtype=float)
    event = frame["event"].to_numpy(dtype=int)
    pooled: dict[float, list[tuple[Landmark, np.ndarray, np.ndarray]]] = {s: [] for s in landmarks}
    for k in range(folds):
        fitter = _fit(frame[fold != k], covariates, penalizer)
        held = np.flatnonzero(fold == k)
        for s in landmarks:
            lm = at_landmark(ids[held], start[held], stop[held], event[held], s)
            if not len(lm.rows):
                continue
            X = frame.iloc[held[lm.rows]][covariates]
            hazard = np.asarray(fitter.predict_partial_hazard(X), dtype=float)
            increment = _baseline_at(fitter, s + horizon) - _baseline_at(fitter, s)
            pooled[s].append((lm, np.log(hazard), np.exp(-increment * hazard)))
    results = []
    for s in landmarks:
        parts = pooled[s]
        if not parts:
            results.append({"landmark": s, "horizon": horizon, "at_risk": 0})
            continue
        together = Landmark(
            s,
            np.concatenate([p[0].rows for p in parts]),
            np.concatenate([p[0].residual for p in parts]),
            np.concatenate([p[0].event for p in parts]),
            np.concatenate([p[0].patients for p in parts]),
        )
        risk = np.concatenate([p[1] for p in parts])
        survival = np.concatenate([p[2] for p in parts])
        results.append(landmark_metrics(together, risk, survival, horizon))
    return {
        "task": "survival",
        "method": METHOD,
        "landmarks": results,
        "folds": folds,
        "seed": seed,
        "n": len(patients),
        "rows": len(frame),
        "events": int(frame.groupby("id")["event"].max().sum()),
    }


def train_time_varying(
    registry: Registry,
    *,
    name: str = "stanford-heart-tv-cox",
    frame: pd.DataFrame | None = None,
    covariates: list[str] | None = None,
    landmarks: list[float] | None = None,
    horizon: float = 365.0,
    folds: int = 5,
    seed: int = 42,
    penalizer: float = 0.01,
    created_by: str | None = None,
) -> TimeVaryingResult:
    """Fit, evaluate by landmarking, register the linear risk score, store evaluation, record
    and card statement."""
    from sklearn.linear_model import LinearRegression  # noqa: PLC0415 (heavy: scikit-learn)

    actor = created_by or current_user()
    source = STANFORD
    if frame is None:
        from lifelines.datasets import load_stanford_heart_transplants  # noqa: PLC0415

        frame = load_stanford_heart_transplants()
    else:
        source = "given long-format frame"
    covariates = covariates or ["age", "year", "surgery", "transplant"]
    landmarks = landmarks or [30.0, 90.0, 180.0]
    frame = frame.reset_index(drop=True)
    evaluation = landmark_evaluation(frame, covariates, landmarks, horizon, folds, seed, penalizer)
    fitter = _fit(frame, covariates, penalizer)
    beta = fitter.params_.loc[covariates].to_numpy(dtype=float)
    sample = frame[covariates].astype(float)
    # lifelines centres the covariates: its log partial hazard is beta . (x - mean), whose value
    # at x = 0 is the intercept (read through its public API, not its private mean)
    origin = pd.DataFrame([np.zeros(len(covariates))], columns=covariates)
    intercept = float(np.asarray(fitter.predict_log_partial_hazard(origin), dtype=float)[0])
    score = LinearRegression()
    score.fit(sample, np.zeros(len(sample)))  # shapes and names; coefficients set below
    score.coef_ = beta
    score.intercept_ = intercept  # = lifelines' log partial hazard
    sha = fingerprint(frame)
    version = registry.register(
        name,
        score,
        sample=sample,
        signature=infer_signature(sample),
        description="Time-varying Cox (Stanford heart transplant data): log partial hazard of "
        "the covariates known now; evaluated by landmarking.",
        tags={"trained_by": "medserve time-varying cox", "algorithm": "cox_time_varying"},
        created_by=actor,
    )
    version = registry.store.update_version(
        name, version.version, signature={**version.signature, "task": "survival"}, actor=actor
    )
    cumulative = fitter.baseline_cumulative_hazard_.iloc[:, 0]
    record: dict[str, Any] = {
        "data": {
            "source": source,
            "sha256": sha,
            "rows_used": len(frame),
            "patients": int(frame["id"].nunique()),
            "format": "long (start, stop] intervals per patient",
        },
        "algorithm": {
            "name": "cox_time_varying",
            "description": METHOD,
            "coefficients": dict(zip(covariates, [round(float(b), 6) for b in beta], strict=True)),
            "penalizer": penalizer,
        },
        "split": {"method": f"patient-grouped {folds}-fold out-of-fold landmark predictions"},
        "survival": {
            "horizons": [horizon],
            "served_output": "log partial hazard (higher = earlier event)",
            "baseline": {
                "coefficient": 1.0,
                "times": [float(t) for t in cumulative.index],
                "cumulative_hazard": [float(h) for h in cumulative],
                "method": "lifelines Breslow baseline of the time-varying Cox model",
            },
        },
        "evaluation_method": METHOD,
        "seed": seed,
        "library_versions": _versions_of("lifelines", "numpy", "pandas", "scikit-learn"),
        "created_by": actor,
    }
    gov = GovernanceStore(registry.store)
    gov.save_training_run(name, version.version, record, METHOD, actor=actor)
    gov.save_evaluation(
        name,
        version.version,
        dataset_sha256=sha,
        dataset_name=f"{source} (landmark, out of fold)",
        kind="landmark",
        result=evaluation,
        report_sha256=None,
        created_by=actor,
    )
    gov.save_card(
        name,
        version.version,
        {
            "evaluation_method": METHOD,
            "intended_use": "Research demonstration of time-varying survival modelling.",
        },
        actor,
    )
    return TimeVaryingResult(version, evaluation, record)

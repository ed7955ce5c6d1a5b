"""Training on trajectories without leakage in time.

From long-format measurements and one row per stay, a trajectory spec samples **prediction
times** along each stay (every ``every_hours`` from ``start_hours`` while the patient is still
at risk), builds at each one the series known then (never a later measurement), derives the
declared series features with the same core function serving uses
(:func:`medserve.core.series.series_features`), and labels each prediction time by the
``horizon`` rule (event within ``horizon`` hours *of that prediction time*; a stay that ends
without the event before the horizon is excluded, as ``pipeline._derive_horizon_label`` does).

The split is **by patient and by time**: patients are divided first, then a calendar cutoff is
chosen so that every training prediction time plus the horizon is at or before the cutoff (its
label was known by then) and every test prediction time is after it. Rows on the wrong side of
the cutoff for their patient's group are dropped and counted. The rest of the run (CV, threshold,
evaluation, registration, card) is the ordinary pipeline's, with the series and the series
features stored in the version's signature as declarative JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medserve.core.errors import InvalidRequestError
from medserve.core.registry.service import Registry
from medserve.core.registry.signature import Signature, infer_signature
from medserve.core.series import (
    SECONDS_PER_HOUR,
    Padded,
    SeriesFeature,
    SeriesFeatureBlock,
    SeriesSpec,
    check_padded,
    pad,
    series_features,
)
from medserve.features.training.pipeline import TrainingResult, _derive_horizon_label, train
from medserve.features.training.spec import (
    EvaluationSettings,
    Features,
    Threshold,
    TrainingSpec,
    invalid_spec,
)
from medserve.features.training.split import Split


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeriesEntry(_Strict):
    name: str
    variable: str | None = Field(default=None, description="Its name in the data (default: name).")
    unit: str | None = None
    max_length: int = Field(default=48, ge=1, le=10_000)
    max_gap_hours: float | None = Field(default=None, gt=0)
    lookback_hours: float | None = Field(
        default=None,
        gt=0,
        description="Measurements older than this are left out, at training and serving.",
    )
    refuse_unsorted: bool = Field(default=True, description="Else sorted (serving).")
    refuse_duplicates: bool = Field(default=True, description="Two points at one time.")

    def spec(self) -> SeriesSpec:
        return SeriesSpec(
            name=self.name,
            unit=self.unit,
            max_length=self.max_length,
            refuse_unsorted=self.refuse_unsorted,
            refuse_duplicates=self.refuse_duplicates,
            max_gap=None if self.max_gap_hours is None else self.max_gap_hours * SECONDS_PER_HOUR,
            lookback=None
            if self.lookback_hours is None
            else self.lookback_hours * SECONDS_PER_HOUR,
        )


class PredictionTimes(_Strict):
    start_hours: float = Field(default=4.0, ge=0)
    every_hours: float = Field(default=4.0, gt=0)


class Columns(_Strict):
    stay: str = "stay"
    patient: str = "patient"
    admit_time: str = Field(default="admit_time", description="Calendar hours (time split).")
    end_time: str = Field(default="los_hours", description="Hours after admission it ends.")
    event: str = "deteriorated"
    event_time: str = "event_time"
    time: str = Field(default="time", description="Measurement: hours after admission.")
    variable: str = "variable"
    value: str = "value"


class TrajectorySpec(_Strict):
    name: str
    description: str = ""
    data: str = Field(
        default="synthetic:icu",
        description="'synthetic:icu' (the generator), or 'MEASUREMENTS.csv|STAYS.csv'.",
    )
    synthetic_stays: int = Field(default=300, ge=20)
    columns: Columns = Field(default_factory=Columns)
    static: list[str] = Field(default_factory=list, description="One value per stay (age).")
    series: list[SeriesEntry] = Field(min_length=1)
    series_features: list[SeriesFeatureBlock] = Field(min_length=1)
    prediction_times: PredictionTimes = Field(default_factory=PredictionTimes)
    horizon: float = Field(gt=0, description="Hours after each prediction time.")
    time_unit: Literal["hours"] = "hours"
    test_size: float = Field(default=0.3, gt=0.05, lt=0.6)
    algorithms: list[str] = Field(default_factory=lambda: ["logistic_regression"])
    cv_folds: int = Field(default=5, ge=2, le=20)
    seed: int = 42
    threshold: Threshold = Field(default_factory=Threshold)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    acceptance: list[dict[str, Any]] = Field(default_factory=list)
    card: dict[str, Any] = Field(default_factory=dict)

    @property
    def features(self) -> list[SeriesFeature]:
        return [f for block in self.series_features for f in block.expand()]

    @property
    def label(self) -> str:
        return f"{self.columns.event}_within_{self.horizon:g}h"


def parse_trajectory_spec(raw: Any) -> TrajectorySpec:
    try:
        spec = TrajectorySpec.model_validate(raw)
    except ValidationError as exc:
        raise invalid_spec("trajectory spec", exc) from exc
    names = {s.name for s in spec.series}
    unknown = sorted({f.series for f in spec.features} - names)
    if unknown:
        raise InvalidRequestError(
            f"series_features: undeclared series {', '.join(unknown)}",
            details=[
                {
                    "field": "series_features",
                    "rule": "undeclared_series",
                    "message": "each block names a series declared under series:",
                }
            ],
        )
    return spec


def load_trajectory_spec(path: Path) -> tuple[TrajectorySpec, str, Path]:
    try:
        text = path.read_text()
        raw = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidRequestError(f"cannot read the spec {path}: {exc}") from exc
    return parse_trajectory_spec(raw), text, path.parent


def load_trajectory_data(
    spec: TrajectorySpec, base: Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(stays, measurements) of the spec's data source."""
    if spec.data == "synthetic:icu":
        from medserve.features.training.synthetic_icu import generate  # noqa: PLC0415

        return generate(spec.synthetic_stays, spec.seed)
    parts = spec.data.split("|")
    if len(parts) != 2:
        raise InvalidRequestError("data: 'synthetic:icu' or 'MEASUREMENTS.csv|STAYS.csv'")
    root = base or Path.cwd()
    measurements, stays = (pd.read_csv(root / p) for p in parts)
    return stays, measurements


# -- prediction times and their series ----------------------------------------------------------
@dataclass
class Samples:
    """One row per prediction time, with what a request at that time would carry."""

    frame: pd.DataFrame  # stay, patient, prediction_time, calendar_time, static, features, label
    batch: dict[str, Padded]  # the series known at each prediction time (row order of frame)
    horizon: dict[str, Any]  # the label rule and its exclusions
    refused: int  # prediction times whose series break a rule serving would refuse


def sample_prediction_times(
    spec: TrajectorySpec, stays: pd.DataFrame, measurements: pd.DataFrame
) -> Samples:
    c = spec.columns
    missing = [
        col
        for col in (
            c.stay,
            c.patient,
            c.admit_time,
            c.end_time,
            c.event,
            c.event_time,
            *spec.static,
        )
        if col not in stays
    ]
    missing += [col for col in (c.stay, c.time, c.variable, c.value) if col not in measurements]
    if missing:
        raise InvalidRequestError(f"columns not in the data: {', '.join(sorted(set(missing)))}")
    by_stay: dict[Any, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    variables = {s.variable or s.name: s.name for s in spec.series}
    wanted = measurements[measurements[c.variable].isin(list(variables))]
    for (stay, variable), group in wanted.groupby([c.stay, c.variable], sort=False):
        ordered = group.sort_values(c.time)
        by_stay.setdefault(stay, {})[variables[str(variable)]] = (
            ordered[c.time].to_numpy(dtype=float),
            ordered[c.value].to_numpy(dtype=float),
        )
    rows: list[dict[str, Any]] = []
    points: dict[str, list[list[tuple[float, float]]]] = {s.name: [] for s in spec.series}
    step = spec.prediction_times
    for stay in stays.itertuples(index=False):
        record = stay._asdict()
        end = float(record[c.end_time])
        event = int(record[c.event])
        event_time = float(record[c.event_time]) if event else math.nan
        at_risk_until = event_time if event else end
        t = step.start_hours
        while t < at_risk_until:
            row = {
                "stay": record[c.stay],
                "patient": str(record[c.patient]),
                "prediction_time": t,
                "calendar_time": float(record[c.admit_time]) + t,
                "time_from_prediction": at_risk_until - t,
                "event": event,
                **{name: record[name] for name in spec.static},
            }
            rows.append(row)
            known = by_stay.get(record[c.stay], {})
            for s in spec.series:
                times, values = known.get(s.name, (np.empty(0), np.empty(0)))
                keep = times <= t
                if s.lookback_hours is not None:  # loosely: the core look-back decides
                    keep &= times >= t - s.lookback_hours - 1
                before = [
                    ((t - a) * SECONDS_PER_HOUR, v)
                    for a, v in zip(times[keep], values[keep], strict=True)
                ]
                points[s.name].append(before)
            t += step.every_hours
    if not rows:
        raise InvalidRequestError("no prediction time falls inside a stay")
    frame = pd.DataFrame(rows)
    batch = {s.name: pad(points[s.name], s.max_length) for s in spec.series}
    refused = np.zeros(len(frame), dtype=bool)
    for s in spec.series:
        # the serving rules, look-back included: a row serving would refuse is not trained on
        checked, problems = check_padded(s.spec(), batch[s.name])
        for p in problems:
            refused[p["row"]] = True
        checked.lengths = np.minimum(checked.lengths, s.max_length)  # refused rows only
        batch[s.name] = checked.to_width(s.max_length)
    derived = series_features(spec.features, batch)
    for j, feature in enumerate(spec.features):
        frame[feature.column] = derived[:, j]
    keep = ~refused
    frame = frame.loc[keep].reset_index(drop=True)
    batch = {k: Padded(v.values[keep], v.times[keep], v.lengths[keep]) for k, v in batch.items()}
    label_spec = TrainingSpec(
        name=spec.name,
        data=spec.data,
        task="binary",
        time="time_from_prediction",
        event="event",
        horizon=spec.horizon,
    )
    labelled, info = _derive_horizon_label(label_spec, frame)
    kept = ~((frame["event"] == 0) & (frame["time_from_prediction"] < spec.horizon)).to_numpy()
    batch = {k: Padded(v.values[kept], v.times[kept], v.lengths[kept]) for k, v in batch.items()}
    # positions, as the batch: row i of the frame is row i of every padded series
    labelled = labelled.rename(columns={label_spec.label_column: spec.label}).reset_index(drop=True)
    info["label"] = spec.label
    info["rule"] = (
        f"1 = {spec.columns.event} within {spec.horizon:g} h of the prediction time; "
        f"0 = still observed {spec.horizon:g} h later without it; a stay that ended (discharge) "
        f"less than {spec.horizon:g} h after the prediction time is excluded"
    )
    return Samples(labelled, batch, info, int(refused.sum()))


# -- the split ----------------------------------------------------------------------------------
def patient_time_split(
    patients: np.ndarray,
    calendar_time: np.ndarray,
    horizon: float,
    test_size: float,
    seed: int,
) -> tuple[Split, np.ndarray]:
    """Patients divided first (about ``test_size`` of them to test), then a calendar cutoff:
    every training prediction time + ``horizon`` <= cutoff < every test prediction time. Returns
    the split (indices of the kept rows, in the kept order) and the mask of kept rows."""
    unique = np.unique(patients)
    rng = np.random.default_rng(seed)
    test_patients = set(
        rng.choice(unique, size=max(1, round(len(unique) * test_size)), replace=False).tolist()
    )
    is_test = np.array([p in test_patients for p in patients.tolist()])
    cutoff = float(np.quantile(calendar_time, 1 - test_size))
    train_ok = ~is_test & (calendar_time + horizon <= cutoff)
    test_ok = is_test & (calendar_time > cutoff)
    kept = train_ok | test_ok
    order = np.flatnonzero(kept)
    position = np.full(len(kept), -1)
    position[order] = np.arange(len(order))
    train_idx = position[np.flatnonzero(train_ok)]
    test_idx = position[np.flatnonzero(test_ok)]
    if not len(train_idx) or not len(test_idx):
        raise InvalidRequestError("the patient-and-time split left no training or no test rows")
    overlap = len(set(patients[train_ok].tolist()) & set(patients[test_ok].tolist()))
    if overlap:  # cannot happen by construction; checked as the patient split checks it
        raise InvalidRequestError(f"{overlap} patients are in both train and test")
    record = {
        "method": (
            "by patient and by time: patients divided first, then a calendar cutoff such that "
            f"every training prediction time + the {horizon:g} h horizon <= cutoff < every test "
            "prediction time (no label known after the cutoff trains the model)"
        ),
        "grouped_by": "patient",
        "seed": seed,
        "cutoff_hours": cutoff,
        "train_rows": len(train_idx),
        "test_rows": len(test_idx),
        "train_patients": len(np.unique(patients[train_ok])),
        "test_patients": len(np.unique(patients[test_ok])),
        "patient_overlap": overlap,
        "rows_dropped_by_time_cutoff": int((~kept).sum()),
    }
    return Split(train_idx, test_idx, record), kept


# -- the run ------------------------------------------------------------------------------------
def trajectory_signature(spec: TrajectorySpec, X: pd.DataFrame) -> Signature:
    """Static inputs as inferred from the data; derived columns pass NaN (an empty window) to
    the model's own imputation and carry no range (the client cannot send them)."""
    inferred = infer_signature(X[spec.static], range_margin=0.5) if spec.static else None
    inputs = list(inferred.inputs) if inferred is not None else []
    from medserve.core.registry.signature import FeatureSpec  # noqa: PLC0415

    for feature in spec.features:
        inputs.append(
            FeatureSpec(
                name=feature.column,
                required=False,
                missing="impute",
                description=f"derived: {feature.stat} of {feature.series}"
                + (f" over {feature.window_hours:g} h" if feature.window_hours else ""),
            )
        )
    return Signature(
        inputs=inputs, series=[s.spec() for s in spec.series], series_features=spec.features
    )


def train_trajectories(
    spec: TrajectorySpec,
    registry: Registry,
    *,
    stays: pd.DataFrame | None = None,
    measurements: pd.DataFrame | None = None,
    base: Path | None = None,
    spec_text: str | None = None,
    created_by: str | None = None,
) -> tuple[TrainingResult, Samples]:
    """Sample, label, split by patient and time, then run the pipeline and register."""
    if stays is None or measurements is None:
        stays, measurements = load_trajectory_data(spec, base)
    samples = sample_prediction_times(spec, stays, measurements)
    frame = samples.frame
    split, kept = patient_time_split(
        frame["patient"].to_numpy(),
        frame["calendar_time"].to_numpy(dtype=float),
        spec.horizon,
        spec.test_size,
        spec.seed,
    )
    frame = frame.loc[kept].reset_index(drop=True)
    samples.batch = {
        k: Padded(v.values[kept], v.times[kept], v.lengths[kept]) for k, v in samples.batch.items()
    }
    samples.frame = frame
    columns = [*spec.static, *(f.column for f in spec.features)]
    training_spec = TrainingSpec(
        name=spec.name,
        description=spec.description,
        data=spec.data,
        task="binary",
        target=spec.label,
        positive_label=1,
        patient_id="patient",
        features=Features(numeric=columns),
        missing="impute",
        algorithms=spec.algorithms,
        cv_folds=spec.cv_folds,
        seed=spec.seed,
        threshold=spec.threshold,
        evaluation=spec.evaluation,
        acceptance=spec.acceptance,
        card={
            "training_method": (
                "prediction times every "
                f"{spec.prediction_times.every_hours:g} h along each stay from "
                f"{spec.prediction_times.start_hours:g} h while at risk; label: "
                f"{samples.horizon['rule']}; split {split.record['method']}"
            ),
            **spec.card,
        },
    )
    split.record["prediction_times"] = spec.prediction_times.model_dump()
    split.record["horizon_label"] = samples.horizon
    split.record["rows_refused_by_series_rules"] = samples.refused
    table = frame[[*columns, spec.label, "patient"]]
    result = train(
        training_spec,
        registry,
        frame=table,
        spec_text=spec_text or yaml.safe_dump(spec.model_dump(mode="json")),
        signature=trajectory_signature(spec, frame),
        split=split,
        created_by=created_by,
        tags={"trajectory": "series features"},
    )
    return result, samples

"""Training on trajectories without leakage in time: prediction times inside stays, series known
at each prediction time only, horizon labels from each prediction time, and a split by patient
and by time (train prediction time + horizon <= cutoff < test prediction time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medserve.core.errors import InvalidRequestError
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.faces.demo.trajectory import demo_spec
from medserve.features.training.synthetic_icu import SYNTHETIC_NOTICE, generate
from medserve.features.training.trajectories import (
    Samples,
    TrajectorySpec,
    parse_trajectory_spec,
    patient_time_split,
    sample_prediction_times,
    train_trajectories,
)


@pytest.fixture(scope="module")
def spec() -> TrajectorySpec:
    return demo_spec(stays=80, bootstrap=0)


@pytest.fixture(scope="module")
def data(spec: TrajectorySpec) -> tuple[object, object, Samples]:
    stays, measurements = generate(spec.synthetic_stays, spec.seed)
    return stays, measurements, sample_prediction_times(spec, stays, measurements)


def test_split_keeps_patients_apart_and_time_ordered(
    spec: TrajectorySpec, data: tuple[object, object, Samples]
) -> None:
    samples = data[2]
    frame = samples.frame
    patients = frame["patient"].to_numpy()
    when = frame["calendar_time"].to_numpy(dtype=float)
    split, kept = patient_time_split(patients, when, spec.horizon, spec.test_size, spec.seed)
    kept_patients, kept_when = patients[kept], when[kept]
    train_p, test_p = set(kept_patients[split.train]), set(kept_patients[split.test])
    assert train_p
    assert test_p
    assert not train_p & test_p  # no patient on both sides
    cutoff = split.record["cutoff_hours"]
    assert (kept_when[split.train] + spec.horizon <= cutoff).all()
    assert (kept_when[split.test] > cutoff).all()
    assert kept_when[split.train].max() + spec.horizon <= cutoff < kept_when[split.test].min()
    assert split.record["patient_overlap"] == 0
    assert split.record["rows_dropped_by_time_cutoff"] == int((~kept).sum())


def test_labels_are_measured_from_each_prediction_time(
    spec: TrajectorySpec, data: tuple[object, object, Samples]
) -> None:
    samples = data[2]
    frame = samples.frame
    label = frame[spec.label].to_numpy()
    remaining = frame["time_from_prediction"].to_numpy()
    event = frame["event"].to_numpy()
    assert ((label == 1) == ((event == 1) & (remaining <= spec.horizon))).all()
    # a stay that ended without the event less than the horizon later has no label: excluded
    assert not ((event == 0) & (remaining < spec.horizon)).any()
    assert samples.horizon["excluded_censored_before_horizon"] > 0
    # prediction times fall inside the stay, before its event
    assert (remaining > 0).all()


def test_series_hold_only_what_was_known_at_the_prediction_time(
    spec: TrajectorySpec, data: tuple[object, object, Samples]
) -> None:
    _stays, measurements, samples = data
    frame = samples.frame
    for name, padded in samples.batch.items():
        mask = padded.mask
        assert (padded.times[mask] >= 0).all()  # nothing after the prediction time
        lookback = next(s.lookback_hours for s in spec.series if s.name == name)
        assert (padded.times[mask] <= lookback * 3600 + 1e-6).all()
    # one row checked against the raw measurements
    row = int(np.flatnonzero(samples.batch["heart_rate"].lengths > 3)[0])
    stay, t = frame["stay"].iloc[row], frame["prediction_time"].iloc[row]
    raw = measurements[(measurements["stay"] == stay) & (measurements["variable"] == "heart_rate")]
    known = raw[(raw["time"] <= t) & (raw["time"] >= t - 24)]["value"].to_numpy()[-48:]
    k = int(samples.batch["heart_rate"].lengths[row])
    np.testing.assert_allclose(samples.batch["heart_rate"].values[row, :k], known, rtol=1e-6)


def test_a_trained_trajectory_version_stores_its_series_declaratively(
    tmp_path: Path, spec: TrajectorySpec
) -> None:
    registry = Registry.open(Settings(home=tmp_path))
    try:
        result, _ = train_trajectories(spec, registry, created_by="test")
    finally:
        registry.close()
    signature = result.version.signature
    assert [s["name"] for s in signature["series"]] == [s.name for s in spec.series]
    assert signature["series_features"][0] == {
        "series": "heart_rate",
        "stat": "last",
        "window_hours": 6.0,
        "name": None,
    }
    assert result.record["split"]["horizon_label"]["label"] == spec.label
    assert result.evaluation["metrics"]["auroc"]["value"] > 0.6  # the synthetic drift is learnt


def test_generator_is_labelled_synthetic_and_deterministic() -> None:
    a_stays, a_meas = generate(30, 5)
    b_stays, b_meas = generate(30, 5)
    assert a_stays.equals(b_stays)
    assert a_meas.equals(b_meas)
    assert "SYNTHETIC" in SYNTHETIC_NOTICE
    assert generate.__module__.endswith("synthetic_icu")
    # drift before deterioration: heart rate in the last 4 h before the event is higher
    events = a_stays[a_stays["deteriorated"] == 1]
    rises = []
    for stay in events.itertuples():
        hr = a_meas[(a_meas["stay"] == stay.stay) & (a_meas["variable"] == "heart_rate")]
        late = hr[hr["time"] > stay.event_time - 4]["value"].mean()
        early = hr[hr["time"] < stay.event_time - 16]["value"].mean()
        if np.isfinite(late) and np.isfinite(early):
            rises.append(late - early)
    assert rises
    assert np.mean(rises) > 10


def test_spec_refuses_features_of_undeclared_series() -> None:
    with pytest.raises(InvalidRequestError, match="undeclared series"):
        parse_trajectory_spec(
            {
                "name": "x",
                "horizon": 12,
                "series": [{"name": "heart_rate"}],
                "series_features": [{"series": "lactate", "stats": ["last"]}],
            }
        )


def test_csv_data_gives_the_same_samples(tmp_path: Path, spec: TrajectorySpec) -> None:
    from medserve.features.training.trajectories import load_trajectory_data

    stays, measurements = generate(25, 3)
    measurements.to_csv(tmp_path / "measurements.csv", index=False)
    stays.to_csv(tmp_path / "stays.csv", index=False)
    from_csv = spec.model_copy(update={"data": "measurements.csv|stays.csv"})
    read_stays, read_measurements = load_trajectory_data(from_csv, tmp_path)
    a = sample_prediction_times(spec, stays, measurements)
    b = sample_prediction_times(spec, read_stays, read_measurements)
    np.testing.assert_allclose(
        a.frame.select_dtypes("number").to_numpy(),
        b.frame.select_dtypes("number").to_numpy(),
        rtol=1e-9,  # a CSV round trip of floats
        atol=1e-12,
        equal_nan=True,
    )

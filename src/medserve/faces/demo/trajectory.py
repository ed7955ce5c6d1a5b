"""Demo: an ICU deterioration model that takes a trajectory (SYNTHETIC data, no real patient).

``icu-deterioration`` is trained from a trajectory spec on the synthetic ICU generator
(``features/training/synthetic_icu.py``): prediction times every 4 h along each stay, label
"deteriorated within 12 h of the prediction time", split by patient and by time, series features
of heart rate, respiratory rate, lactate and systolic pressure, a logistic regression. It is
served through the records API (``series`` + ``as_of``), OIP v2 (``<name>.values``, ``.times``,
``.lengths`` tensors) and FHIR (every Observation in the look-back window). The payload builders
here are also what the tests use to send one training row through all three.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medserve.core.series import Padded

if TYPE_CHECKING:
    from medserve.core.registry.service import Registry
    from medserve.features.training.trajectories import Samples, TrajectorySpec

MODEL = "icu-deterioration"
AS_OF = datetime(2026, 3, 1, 14, 0, tzinfo=UTC)  # the example requests' prediction time
LOINC = {"heart_rate": "8867-4", "resp_rate": "9279-1", "lactate": "2524-7", "sbp": "8480-6"}
UNITS = {"heart_rate": "/min", "resp_rate": "/min", "lactate": "mmol/L", "sbp": "mm[Hg]"}

DEMO_SPEC: dict[str, Any] = {
    "name": MODEL,
    "description": (
        "DEMO ONLY, SYNTHETIC DATA: deterioration within 12 h of the prediction time, from the "
        "last 24 h of vital signs and lactate of a simulated ICU stay. No clinical validity."
    ),
    "data": "synthetic:icu",
    "synthetic_stays": 240,
    "static": ["age"],
    "series": [
        {
            "name": "heart_rate",
            "unit": "/min",
            "max_length": 48,
            "max_gap_hours": 12,
            "lookback_hours": 24,
        },
        {
            "name": "resp_rate",
            "unit": "/min",
            "max_length": 48,
            "max_gap_hours": 12,
            "lookback_hours": 24,
        },
        {"name": "lactate", "unit": "mmol/L", "max_length": 12, "lookback_hours": 24},
        {
            "name": "sbp",
            "unit": "mm[Hg]",
            "max_length": 24,
            "max_gap_hours": 12,
            "lookback_hours": 24,
        },
    ],
    "series_features": [
        {"series": "heart_rate", "stats": ["last", "mean", "max", "slope"], "window_hours": 6},
        {"series": "heart_rate", "stats": ["mean"], "window_hours": 24},
        {"series": "resp_rate", "stats": ["last", "slope"], "window_hours": 6},
        {"series": "lactate", "stats": ["last", "delta", "time_since_last", "count"]},
        {"series": "sbp", "stats": ["last", "min", "slope"], "window_hours": 6},
    ],
    "prediction_times": {"start_hours": 4, "every_hours": 4},
    "horizon": 12,
    "test_size": 0.3,
    "algorithms": ["logistic_regression"],
    "cv_folds": 3,
    "evaluation": {"bootstrap": 50, "min_events": 5},
    "card": {
        "intended_use": "Demonstration of trajectory inputs only; never for patient care.",
        "training_data": "SYNTHETIC ICU trajectories from medserve's documented generator.",
    },
}

FHIR_MAP: dict[str, Any] = {
    "lookback_days": 1,
    "title": "ICU deterioration (synthetic demo)",
    "outcome": {"text": "deterioration within 12 hours"},
    "positive_class": "1",
    "risk_bands": [
        {"below": 0.1, "code": "low", "indicator": "info"},
        {"below": 0.3, "code": "moderate", "indicator": "warning"},
        {"code": "high", "indicator": "critical"},
    ],
    "features": {
        "age": {"patient": "age"},
        **{
            name: {"loinc": code, "unit": UNITS[name], "aggregate": "series"}
            for name, code in LOINC.items()
        },
    },
}


def demo_spec(stays: int | None = None, bootstrap: int | None = None) -> TrajectorySpec:
    from medserve.features.training.trajectories import parse_trajectory_spec  # noqa: PLC0415

    raw = json.loads(json.dumps(DEMO_SPEC))
    if stays is not None:
        raw["synthetic_stays"] = stays
    if bootstrap is not None:
        raw["evaluation"]["bootstrap"] = bootstrap
    return parse_trajectory_spec(raw)


def register_trajectory_model(
    registry: Registry, spec: TrajectorySpec | None = None, alias: str | None = "production"
) -> tuple[Any, Samples]:
    """Train and register the demo model (with its FHIR map); ``(TrainingResult, Samples)``."""
    from medserve.features.training.trajectories import train_trajectories  # noqa: PLC0415

    result, samples = train_trajectories(spec or demo_spec(), registry, created_by="medserve-demo")
    version = registry.store.update_version(
        MODEL, result.version.version, serving_config={"fhir": FHIR_MAP}, actor="medserve-demo"
    )
    if alias is not None:
        registry.set_alias(MODEL, alias, version.version, actor="medserve-demo", reason="demo")
    return result, samples


# -- one training row as each protocol's request --------------------------------------------------
def _points(padded: Padded, row: int) -> list[tuple[float, float]]:
    k = int(padded.lengths[row])
    return [(float(padded.times[row, j]), float(padded.values[row, j])) for j in range(k)]


def _instant(as_of: datetime, seconds_before: float) -> datetime:
    return as_of - timedelta(seconds=round(seconds_before))


def records_instance(
    samples: Samples, row: int, static: list[str], as_of: datetime = AS_OF
) -> dict[str, Any]:
    frame = samples.frame
    return {
        **{name: float(frame[name].iloc[row]) for name in static},
        "as_of": as_of.isoformat(),
        "series": {
            name: [[_instant(as_of, t).isoformat(), v] for t, v in _points(padded, row)]
            for name, padded in samples.batch.items()
        },
    }


def v2_body(samples: Samples, rows: list[int], static: list[str]) -> dict[str, Any]:
    inputs: list[dict[str, Any]] = [
        {
            "name": name,
            "datatype": "FP32",
            "shape": [len(rows)],
            "data": [float(samples.frame[name].iloc[r]) for r in rows],
        }
        for name in static
    ]
    for name, padded in samples.batch.items():
        width = max(1, int(padded.lengths[rows].max()))
        values = np.zeros((len(rows), width))
        times = np.zeros((len(rows), width))
        for i, r in enumerate(rows):
            k = int(padded.lengths[r])
            values[i, :k] = padded.values[r, :k]
            times[i, :k] = np.round(padded.times[r, :k])
        inputs += [
            {
                "name": f"{name}.values",
                "datatype": "FP32",
                "shape": [len(rows), width],
                "data": values.ravel().tolist(),
            },
            {
                "name": f"{name}.times",
                "datatype": "FP32",
                "shape": [len(rows), width],
                "data": times.ravel().tolist(),
            },
            {
                "name": f"{name}.lengths",
                "datatype": "INT32",
                "shape": [len(rows)],
                "data": [int(padded.lengths[r]) for r in rows],
            },
        ]
    return {"id": "trajectory-demo", "inputs": inputs}


def fhir_bundle(samples: Samples, row: int, as_of: datetime = AS_OF) -> dict[str, Any]:
    """A Patient (born so that their age at ``as_of`` is the row's) and one Observation per
    measurement of the row's series."""
    pid = f"synthetic-{row}"
    age = int(samples.frame["age"].iloc[row]) if "age" in samples.frame else 60
    born = as_of.date().replace(year=as_of.year - age) - timedelta(days=1)
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:patient-{row}",
            "resource": {
                "resourceType": "Patient",
                "id": pid,
                "birthDate": born.isoformat(),
                "gender": "unknown",
            },
        }
    ]
    for name, padded in samples.batch.items():
        for j, (t, v) in enumerate(_points(padded, row)):
            entries.append(
                {
                    "fullUrl": f"urn:uuid:obs-{row}-{name}-{j}",
                    "resource": {
                        "resourceType": "Observation",
                        "id": f"{name.replace('_', '-')}-{row}-{j}",
                        "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": LOINC[name]}]},
                        "subject": {"reference": f"urn:uuid:patient-{row}"},
                        "effectiveDateTime": _instant(as_of, t).isoformat(),
                        "valueQuantity": {
                            "value": v,
                            "unit": UNITS[name],
                            "system": "http://unitsofmeasure.org",
                            "code": UNITS[name],
                        },
                    },
                }
            )
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": as_of.isoformat(),
        "entry": entries,
    }


def register_trajectory_demo(registry: Registry, home: Path, base_url: str) -> list[str]:
    """Register the demo model (once), write one request per protocol, return the calls."""
    served = any(m == MODEL and a == "production" for m, a, _ in registry.store.all_aliases())
    spec = demo_spec()
    if served:
        from medserve.features.training.trajectories import (  # noqa: PLC0415
            load_trajectory_data,
            sample_prediction_times,
        )

        stays, measurements = load_trajectory_data(spec)
        samples = sample_prediction_times(spec, stays, measurements)
    else:
        _, samples = register_trajectory_model(registry, spec)
    positive = np.flatnonzero(samples.frame[spec.label].to_numpy() == 1)
    row = int(positive[-1]) if len(positive) else 0
    folder = home / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    records = folder / f"{MODEL}.records.json"
    records.write_text(
        json.dumps({"instances": [records_instance(samples, row, spec.static)]}, indent=1)
    )
    v2 = folder / f"{MODEL}.v2.json"
    v2.write_text(json.dumps(v2_body(samples, [row], spec.static)))
    bundle = folder / f"{MODEL}.fhir-bundle.json"
    bundle.write_text(json.dumps(fhir_bundle(samples, row), indent=1))
    return [
        f"# {MODEL} (SYNTHETIC ICU trajectories; docs/trajectories.md): a trajectory in, "
        "records / OIP v2 / FHIR",
        f"curl -s -X POST {base_url}/v1/models/{MODEL}/predict "
        f"-H 'Content-Type: application/json' -d @{records}",
        f"curl -s -X POST {base_url}/v2/models/{MODEL}/infer "
        f"-H 'Content-Type: application/json' -d @{v2}",
        f"curl -s -X POST {base_url}/v1/models/{MODEL}/predict "
        f"-H 'Content-Type: application/fhir+json' -H 'Accept: application/fhir+json' "
        f"-d @{bundle}",
    ]

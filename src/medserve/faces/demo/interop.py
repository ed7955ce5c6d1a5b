"""The FHIR / CDS Hooks demo model: a cardiovascular risk score on a SYNTHETIC cohort.

No clinical data ships with the packages medserve may use, so the cohort is simulated (seeded)
from a plausible logistic risk on age, sex, glucose, creatinine, blood pressure, BMI and a
hypertension diagnosis. The point is the real FHIR path (LOINC codes, UCUM units, a blood
pressure panel, a coded Condition), not a clinical claim; the model card says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry
from medserve.core.registry.signature import infer_signature

MODEL = "cardio-risk"
SYNTHETIC = {"training_data": "synthetic", "intended_use": "demonstration only"}
FEATURES = [
    "age",
    "sex_male",
    "glucose",
    "creatinine",
    "systolic_bp",
    "diastolic_bp",
    "bmi",
    "hypertension",
]

FHIR_MAP: dict[str, Any] = {
    "lookback_days": 365,
    "outcome": {
        "text": "Major cardiovascular event within 5 years (synthetic demo)",
        "system": "http://snomed.info/sct",
        "code": "49601007",
    },
    "positive_class": "1",
    "risk_bands": [
        {"below": 0.1, "code": "low", "indicator": "info"},
        {"below": 0.3, "code": "moderate", "indicator": "warning"},
        {"code": "high", "indicator": "critical"},
    ],
    "hooks": ["patient-view"],
    "title": "Cardiovascular risk (medserve demo, synthetic)",
    "features": {
        "age": {"patient": "age"},
        "sex_male": {"patient": "gender", "map": {"male": 1, "female": 0}},
        "glucose": {"loinc": ["2345-7", "14749-6"], "unit": "mg/dL"},
        "creatinine": {"loinc": ["2160-0", "14682-9"], "unit": "mg/dL"},
        "systolic_bp": {
            "loinc": "8480-6",
            "unit": "mm[Hg]",
            "aggregate": "mean",
            "lookback_days": 90,
        },
        "diastolic_bp": {
            "loinc": "8462-4",
            "unit": "mm[Hg]",
            "aggregate": "mean",
            "lookback_days": 90,
        },
        "bmi": {"loinc": "39156-5", "unit": "kg/m2"},
        "hypertension": {"condition": ["38341003", "I10"]},
    },
}


def synthetic_cohort(n: int = 3000, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(30, 86, n)
    sex = rng.integers(0, 2, n)
    glucose = np.clip(rng.lognormal(np.log(100), 0.25, n), 60, 400)
    creatinine = np.clip(rng.lognormal(np.log(0.95), 0.3, n), 0.4, 6.0)
    systolic = np.clip(rng.normal(128 + 0.3 * (age - 55), 17, n), 85, 220)
    diastolic = np.clip(systolic * 0.6 + rng.normal(4, 7, n), 45, 130)
    bmi = np.clip(rng.normal(28, 5, n), 16, 55)
    hypertension = (systolic + rng.normal(0, 10, n) > 140).astype(int)
    logit = (
        -5.2
        + 0.055 * (age - 55)
        + 0.45 * sex
        + 0.012 * (glucose - 100)
        + 0.9 * (creatinine - 1.0)
        + 0.02 * (systolic - 128)
        + 0.03 * (bmi - 28)
        + 0.5 * hypertension
    )
    event = rng.random(n) < 1.0 / (1.0 + np.exp(-(logit + 2.8)))
    return pd.DataFrame(
        {
            "age": age.astype(float),
            "sex_male": sex.astype(float),
            "glucose": glucose.round(1),
            "creatinine": creatinine.round(2),
            "systolic_bp": systolic.round(0),
            "diastolic_bp": diastolic.round(0),
            "bmi": bmi.round(1),
            "hypertension": hypertension.astype(float),
            "event": event.astype(int),
        }
    )


def register_cardio_model(registry: Registry, *, alias: str | None = "production") -> ModelVersion:
    # lazy import (heavy: scikit-learn, kept off the serving path)
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    # lazy import (heavy: scikit-learn, kept off the serving path)
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415

    # lazy import (heavy: scikit-learn, kept off the serving path)
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    cohort = synthetic_cohort()
    X, y = cohort[FEATURES], cohort["event"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    signature = infer_signature(X)
    units = {"age": "years", **{k: v.get("unit") for k, v in FHIR_MAP["features"].items()}}
    for spec in signature.inputs:
        spec.unit = units.get(spec.name)
    return registry.register(
        MODEL,
        model,
        sample=X,
        signature=signature,
        alias=alias,
        description=(
            "DEMO ONLY, SYNTHETIC DATA: 5-year cardiovascular event risk from a simulated cohort "
            "(age, sex, glucose, creatinine, blood pressure, BMI, hypertension). Shows FHIR R4 "
            "input/output and CDS Hooks. No clinical validity."
        ),
        tags=SYNTHETIC,
        serving_config={"fhir": FHIR_MAP},
    )


def _quantity(value: float, unit: str, code: str | None = None) -> dict[str, Any]:
    return {
        "value": value,
        "unit": unit,
        "system": "http://unitsofmeasure.org",
        "code": code or unit,
    }


def _observation(
    oid: str, patient: str, loinc: str, when: datetime, **value: Any
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when.isoformat(timespec="seconds"),
    }
    resource.update(value)
    return resource


def example_resources(
    patient_id: str = "example-1", now: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """A Patient with labs in SI units (mmol/L, umol/L), a blood pressure panel and a
    hypertension Condition: what a European EHR might send. Synthetic."""
    now = now or datetime.now(UTC)
    day = timedelta(days=1)
    yield {
        "resourceType": "Patient",
        "id": patient_id,
        "gender": "male",
        "birthDate": f"{now.year - 67}-01-15",
    }
    yield _observation(
        f"{patient_id}-glu",
        patient_id,
        "14749-6",
        now - 3 * day,
        valueQuantity=_quantity(7.8, "mmol/L"),
    )
    yield _observation(
        f"{patient_id}-cre",
        patient_id,
        "14682-9",
        now - 3 * day,
        valueQuantity=_quantity(123.0, "umol/L", "umol/L"),
    )
    for i, (sys_bp, dia_bp) in enumerate([(152, 91), (146, 88)]):
        yield _observation(
            f"{patient_id}-bp{i}",
            patient_id,
            "85354-9",
            now - (10 + 20 * i) * day,
            component=[
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "valueQuantity": _quantity(sys_bp, "mmHg", "mm[Hg]"),
                },
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                    "valueQuantity": _quantity(dia_bp, "mmHg", "mm[Hg]"),
                },
            ],
        )
    yield _observation(
        f"{patient_id}-bmi",
        patient_id,
        "39156-5",
        now - 30 * day,
        valueQuantity=_quantity(31.2, "kg/m2"),
    )
    yield {
        "resourceType": "Condition",
        "id": f"{patient_id}-htn",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
    }


def example_bundle(patient_id: str = "example-1", now: datetime | None = None) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"urn:example:{r['resourceType']}/{r['id']}", "resource": r}
            for r in example_resources(patient_id, now)
        ],
    }


def example_hook_request(patient_id: str = "example-1") -> dict[str, Any]:
    """A patient-view call with the prefetch the service's discovery asks for."""
    resources = list(example_resources(patient_id))
    patient = resources[0]

    def searchset(kind: str, keep: Any) -> dict[str, Any]:
        found = [r for r in resources if r["resourceType"] == kind and keep(r)]
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [
                {"fullUrl": f"http://ehr.example/fhir/{kind}/{r['id']}", "resource": r}
                for r in found
            ],
        }

    def coded(*codes: str) -> Any:
        return lambda r: r["code"]["coding"][0]["code"] in codes

    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": patient_id},
        "prefetch": {
            "patient": patient,
            "obs-glucose": searchset("Observation", coded("2345-7", "14749-6")),
            "obs-creatinine": searchset("Observation", coded("2160-0", "14682-9")),
            "obs-systolic_bp": searchset("Observation", coded("8480-6", "85354-9")),
            "obs-diastolic_bp": searchset("Observation", coded("8462-4", "85354-9")),
            "obs-bmi": searchset("Observation", coded("39156-5")),
            "cond-hypertension": searchset("Condition", coded("38341003", "I10")),
        },
    }


def register_interop_demo(registry: Registry, home: Path, base_url: str) -> list[str]:
    """Register the FHIR demo model (once), write example requests, return the calls."""
    if not any(m == MODEL and a == "production" for m, a, _ in registry.store.all_aliases()):
        register_cardio_model(registry)
    examples = home / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    bundle = examples / "cardio-risk.fhir-bundle.json"
    bundle.write_text(json.dumps(example_bundle(), indent=2))
    hook = examples / "cardio-risk.cds-patient-view.json"
    hook.write_text(json.dumps(example_hook_request(), indent=2))
    predict = f"{base_url}/v1/models/{MODEL}/predict"
    return [
        f"curl -s -X POST {predict} -H 'Content-Type: application/fhir+json' "
        f"-H 'Accept: application/fhir+json' -d @{bundle}",
        f"curl -s {base_url}/cds-services",
        f"curl -s -X POST {base_url}/cds-services/{MODEL} -H 'Content-Type: application/json' "
        f"-d @{hook}",
    ]

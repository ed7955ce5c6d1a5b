"""FHIR Bundle -> records, following a feature map; every problem reported as an issue."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from medserve.core.errors import InvalidRequestError
from medserve.core.registry.signature import Signature, infer_signature
from medserve.faces.demo.interop import FEATURES, FHIR_MAP, example_bundle, synthetic_cohort
from medserve.features.interop.feature_map import FhirMap
from medserve.features.interop.fhir_input import FhirInputError, bundle_to_records
from medserve.features.interop.fhir_output import operation_outcome

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def signature() -> Signature:
    return infer_signature(synthetic_cohort(300)[FEATURES])


@pytest.fixture(scope="module")
def fmap() -> FhirMap:
    return FhirMap.model_validate(FHIR_MAP)


def _entries(bundle: dict[str, Any], code: str) -> list[dict[str, Any]]:
    return [
        e
        for e in bundle["entry"]
        if e["resource"].get("code", {}).get("coding", [{}])[0].get("code") == code
    ]


def test_si_units_become_the_model_units(fmap: FhirMap, signature: Signature) -> None:
    [patient] = bundle_to_records(example_bundle(now=NOW), fmap, signature, as_of=NOW)
    record = patient.record
    assert record["glucose"] == pytest.approx(7.8 * 18.0156, rel=1e-4)
    assert record["creatinine"] == pytest.approx(123.0 / 88.42, rel=1e-3)
    assert record["systolic_bp"] == pytest.approx((152 + 146) / 2)  # mean over the BP panels
    assert record["diastolic_bp"] == pytest.approx((91 + 88) / 2)
    assert record["age"] == 67  # born 15 January, 67 years before NOW (1 June)
    assert record["sex_male"] == 1.0
    assert record["hypertension"] == 1.0
    assert set(record) == set(FEATURES)
    assert patient.reference == "Patient/example-1"
    assert "urn:example:Observation/example-1-glu" in patient.basis


def test_latest_value_in_window_wins(fmap: FhirMap, signature: Signature) -> None:
    bundle = example_bundle(now=NOW)
    newer = copy.deepcopy(_entries(bundle, "14749-6")[0])
    newer["resource"]["id"] = "glu-newer"
    newer["fullUrl"] = "urn:example:Observation/glu-newer"
    newer["resource"]["effectiveDateTime"] = (NOW - timedelta(hours=1)).isoformat()
    newer["resource"]["valueQuantity"] = {"value": 100, "unit": "mg/dL"}
    bundle["entry"].append(newer)
    [patient] = bundle_to_records(bundle, fmap, signature, as_of=NOW)
    assert patient.record["glucose"] == 100.0


def test_entered_in_error_and_stale_readings_are_ignored(
    fmap: FhirMap, signature: Signature
) -> None:
    bundle = example_bundle(now=NOW)
    _entries(bundle, "14749-6")[0]["resource"]["status"] = "entered-in-error"
    _entries(bundle, "14682-9")[0]["resource"]["effectiveDateTime"] = "2020-01-01"
    with pytest.raises(FhirInputError) as caught:
        bundle_to_records(bundle, fmap, signature, as_of=NOW)
    features = {p.feature: p.code for p in caught.value.problems}
    assert features == {"glucose": "required", "creatinine": "required"}


def test_missing_code_and_bad_unit_reported_together(fmap: FhirMap, signature: Signature) -> None:
    bundle = example_bundle(now=NOW)
    bundle["entry"] = [e for e in bundle["entry"] if e not in _entries(bundle, "39156-5")]
    _entries(bundle, "14749-6")[0]["resource"]["valueQuantity"] = {"value": 7.8, "unit": "mg"}
    with pytest.raises(FhirInputError) as caught:
        bundle_to_records(bundle, fmap, signature, as_of=NOW)
    problems = {p.feature: p for p in caught.value.problems}
    assert set(problems) == {"bmi", "glucose"}
    assert problems["bmi"].code == "required"
    assert "39156-5" in problems["bmi"].message
    assert problems["glucose"].code == "value"
    assert "'mg' cannot be converted to mg/dL" in problems["glucose"].message
    assert problems["glucose"].expression is not None
    assert problems["glucose"].expression.endswith(".valueQuantity")
    outcome = OperationOutcome.model_validate(operation_outcome(caught.value.problems))
    assert len(outcome.issue) == 2
    assert {i.code for i in outcome.issue} == {"required", "value"}


def test_two_patients_two_records(fmap: FhirMap, signature: Signature) -> None:
    first = example_bundle("p1", now=NOW)
    second = example_bundle("p2", now=NOW)
    _entries(second, "14749-6")[0]["resource"]["valueQuantity"]["value"] = 5.0
    bundle = {**first, "entry": first["entry"] + second["entry"]}
    records = bundle_to_records(bundle, fmap, signature, as_of=NOW)
    assert [p.reference for p in records] == ["Patient/p1", "Patient/p2"]
    assert records[0].record["glucose"] != records[1].record["glucose"]
    assert records[1].record["glucose"] == pytest.approx(5.0 * 18.0156, rel=1e-4)


def test_not_a_bundle_and_invalid_resources(fmap: FhirMap, signature: Signature) -> None:
    with pytest.raises(FhirInputError, match="a FHIR Bundle is expected"):
        bundle_to_records({"resourceType": "Patient"}, fmap, signature)
    bundle = example_bundle(now=NOW)
    bundle["entry"][0]["resource"]["gender"] = 42  # not a FHIR code
    with pytest.raises(FhirInputError) as caught:
        bundle_to_records(bundle, fmap, signature, as_of=NOW)
    assert caught.value.problems[0].code == "structure"
    assert "gender" in caught.value.problems[0].message


def test_problems_never_quote_identifiers(fmap: FhirMap, signature: Signature) -> None:
    bundle = example_bundle("MRN-99812345", now=NOW)
    bundle["entry"] = bundle["entry"][:1]  # the Patient only: every observation missing
    with pytest.raises(FhirInputError) as caught:
        bundle_to_records(bundle, fmap, signature, as_of=NOW)
    text = str(caught.value) + repr(caught.value.details)
    assert "MRN-99812345" not in text


def test_map_must_fit_the_signature(signature: Signature) -> None:
    raw = copy.deepcopy(FHIR_MAP)
    raw["features"]["lactate"] = raw["features"].pop("bmi") | {"loinc": "2524-7"}
    with pytest.raises(
        InvalidRequestError, match=r"not model inputs: lactate.*no FHIR source: bmi"
    ):
        FhirMap.model_validate(raw).check_against(signature)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"glucose": {"loinc": "2345-7"}}, "needs the UCUM unit"),
        ({"glucose": {"loinc": "2345-7", "patient": "age", "unit": "mg/dL"}}, "exactly one"),
    ],
)
def test_map_validation(change: dict[str, Any], message: str) -> None:
    raw = copy.deepcopy(FHIR_MAP)
    raw["features"].update(change)
    with pytest.raises(ValueError, match=message):
        FhirMap.model_validate(raw)


def test_risk_bands_must_increase() -> None:
    raw = copy.deepcopy(FHIR_MAP)
    raw["risk_bands"] = [{"below": 0.5, "code": "low"}, {"below": 0.2, "code": "high"}]
    with pytest.raises(ValueError, match="increasing order"):
        FhirMap.model_validate(raw)
    fmap = FhirMap.model_validate(FHIR_MAP)
    assert [fmap.band(p).code for p in (0.05, 0.1, 0.29, 0.95)] == [  # type: ignore[union-attr]
        "low",
        "moderate",
        "moderate",
        "high",
    ]

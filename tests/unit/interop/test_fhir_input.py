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


# -- Bundle reference resolution ---------------------------------------------------------------


def _from_server(base: str, patient_id: str, glucose_mmol: float) -> list[dict[str, Any]]:
    """The example patient as server ``base`` would send it: RESTful fullUrls, relative refs."""
    bundle = example_bundle(patient_id, now=NOW)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        entry["fullUrl"] = f"{base}/{resource['resourceType']}/{resource['id']}"
        if resource["resourceType"] == "Observation" and resource["code"]["coding"][0]["code"] in (
            "14749-6",
        ):
            resource["valueQuantity"]["value"] = glucose_mmol
    return list(bundle["entry"])


def test_same_id_patients_from_two_servers_are_scored_apart(
    fmap: FhirMap, signature: Signature
) -> None:
    first = _from_server("https://ehr-a.example/fhir", "123", 5.0)
    second = _from_server("http://ehr-b.example/r4", "123", 9.0)
    # the second server's resources carry the same logical ids: make them its own
    for entry in second:
        entry["resource"] = copy.deepcopy(entry["resource"])
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": first + second}
    patients = bundle_to_records(bundle, fmap, signature, as_of=NOW)
    assert [p.reference for p in patients] == [
        "https://ehr-a.example/fhir/Patient/123",
        "http://ehr-b.example/r4/Patient/123",
    ]
    assert patients[0].record["glucose"] == pytest.approx(5.0 * 18.0156, rel=1e-4)
    assert patients[1].record["glucose"] == pytest.approx(9.0 * 18.0156, rel=1e-4)
    # each takes the mean of its own two BP panels, not of four pooled ones
    assert patients[0].record["systolic_bp"] == pytest.approx((152 + 146) / 2)
    assert all(b.startswith("https://ehr-a.example/") for b in patients[0].basis)
    assert all(b.startswith("http://ehr-b.example/") for b in patients[1].basis)
    assert {p.log_reference for p in patients} == {"Patient/123"}  # what erasure finds


def test_absolute_and_urn_uuid_references_resolve_by_full_url(
    fmap: FhirMap, signature: Signature
) -> None:
    bundle = example_bundle("p9", now=NOW)
    patient_urn = "urn:uuid:04121321-4af5-424c-a0e1-ed3aab1c349d"
    bundle["entry"][0]["fullUrl"] = patient_urn
    for i, entry in enumerate(bundle["entry"][1:]):
        entry["fullUrl"] = f"urn:uuid:00000000-0000-4000-8000-{i:012d}"
        entry["resource"]["subject"] = {"reference": patient_urn}
    [patient] = bundle_to_records(bundle, fmap, signature, as_of=NOW)
    assert patient.record["glucose"] == pytest.approx(7.8 * 18.0156, rel=1e-4)
    # an absolute reference to a server that sent no such Patient attaches to nobody
    stray = copy.deepcopy(_entries(bundle, "14749-6")[0])
    stray["fullUrl"] = "https://other.example/fhir/Observation/x1"
    stray["resource"]["subject"] = {"reference": "https://other.example/fhir/Patient/p9"}
    stray["resource"]["valueQuantity"]["value"] = 30.0
    stray["resource"]["effectiveDateTime"] = NOW.isoformat()
    bundle["entry"].append(stray)
    [patient] = bundle_to_records(bundle, fmap, signature, as_of=NOW)
    assert patient.record["glucose"] == pytest.approx(7.8 * 18.0156, rel=1e-4)


def test_two_patients_that_cannot_be_told_apart_are_refused(
    fmap: FhirMap, signature: Signature
) -> None:
    first = example_bundle("123", now=NOW)
    second = example_bundle("123", now=NOW)
    for entry in second["entry"]:
        entry["fullUrl"] = entry["fullUrl"].replace("urn:example:", "urn:other:")
    bundle = {**first, "entry": first["entry"] + second["entry"]}
    with pytest.raises(FhirInputError) as caught:
        bundle_to_records(bundle, fmap, signature, as_of=NOW)
    [problem] = caught.value.problems
    assert problem.code == "structure"
    assert "ambiguous" in problem.message
    assert "123" not in problem.message


# -- Observation values ------------------------------------------------------------------------


def _glucose(bundle: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = _entries(bundle, "14749-6")[0]
    return entry


def _add_glucose(bundle: dict[str, Any], oid: str, hours_ago: float, **fields: Any) -> None:
    extra = copy.deepcopy(_glucose(bundle))
    extra["fullUrl"] = f"urn:example:Observation/{oid}"
    resource = extra["resource"]
    resource["id"] = oid
    resource.pop("valueQuantity")
    resource["effectiveDateTime"] = (NOW - timedelta(hours=hours_ago)).isoformat()
    resource.update(fields)
    bundle["entry"].append(extra)


@pytest.mark.parametrize(
    "valueless",
    [
        {"dataAbsentReason": {"coding": [{"code": "not-performed"}]}},
        {"status": "registered"},
        {"status": "cancelled", "dataAbsentReason": {"text": "sample lost"}},
        {"status": "entered-in-error", "valueQuantity": {"value": 40.0, "unit": "mmol/L"}},
        {},  # no value at all
    ],
)
def test_a_valueless_observation_beside_a_valid_one_is_skipped(
    fmap: FhirMap, signature: Signature, valueless: dict[str, Any]
) -> None:
    bundle = example_bundle(now=NOW)
    _add_glucose(bundle, "glu-absent", 1, **valueless)  # newer than the valid reading
    [patient] = bundle_to_records(bundle, fmap, signature, as_of=NOW)
    assert patient.record["glucose"] == pytest.approx(7.8 * 18.0156, rel=1e-4)
    assert "urn:example:Observation/glu-absent" not in patient.basis


def test_only_valueless_observations_say_so(fmap: FhirMap, signature: Signature) -> None:
    bundle = example_bundle(now=NOW)
    _add_glucose(bundle, "glu-absent", 1, dataAbsentReason={"text": "not done"})
    bundle["entry"].remove(_glucose(bundle))
    with pytest.raises(FhirInputError) as caught:
        bundle_to_records(bundle, fmap, signature, as_of=NOW)
    [problem] = caught.value.problems
    assert problem.feature == "glucose"
    assert problem.code == "required"
    assert "(1 without a value)" in problem.message


def test_a_period_with_only_an_end_is_timed_by_its_end(fmap: FhirMap, signature: Signature) -> None:
    bundle = example_bundle(now=NOW)
    resource = _glucose(bundle)["resource"]
    del resource["effectiveDateTime"]
    resource["effectivePeriod"] = {"end": (NOW - timedelta(days=2)).isoformat()}
    [patient] = bundle_to_records(bundle, fmap, signature, as_of=NOW)
    assert patient.record["glucose"] == pytest.approx(7.8 * 18.0156, rel=1e-4)
    # with start and end, the end decides which reading is the latest
    _add_glucose(
        bundle,
        "glu-24h",
        30,
        valueQuantity={"value": 100, "unit": "mg/dL"},
        effectivePeriod={
            "start": (NOW - timedelta(days=5)).isoformat(),
            "end": (NOW - timedelta(days=1)).isoformat(),
        },
    )
    del bundle["entry"][-1]["resource"]["effectiveDateTime"]
    [patient] = bundle_to_records(bundle, fmap, signature, as_of=NOW)
    assert patient.record["glucose"] == 100.0


def test_a_comparator_value_is_refused_where_it_would_be_used(
    fmap: FhirMap, signature: Signature
) -> None:
    bundle = example_bundle(now=NOW)
    _add_glucose(
        bundle, "glu-low", 1, valueQuantity={"value": 2.0, "comparator": "<", "unit": "mmol/L"}
    )
    with pytest.raises(FhirInputError) as caught:
        bundle_to_records(bundle, fmap, signature, as_of=NOW)
    [problem] = caught.value.problems
    assert problem.feature == "glucose"
    assert problem.code == "value"
    assert "comparator '<'" in problem.message
    assert "not an exact reading" in problem.message
    assert problem.expression is not None
    assert problem.expression.endswith(".valueQuantity.comparator")
    # an older bound is not what 'latest' uses: the newer exact reading is scored
    _glucose(bundle)["resource"]["effectiveDateTime"] = (NOW - timedelta(minutes=5)).isoformat()
    [patient] = bundle_to_records(bundle, fmap, signature, as_of=NOW)
    assert patient.record["glucose"] == pytest.approx(7.8 * 18.0156, rel=1e-4)


def test_a_bound_inside_a_mean_is_refused(fmap: FhirMap, signature: Signature) -> None:
    bundle = example_bundle(now=NOW)
    panel = _entries(bundle, "85354-9")[1]["resource"]
    panel["component"][0]["valueQuantity"]["comparator"] = ">"
    with pytest.raises(FhirInputError) as caught:
        bundle_to_records(bundle, fmap, signature, as_of=NOW)
    assert [p.feature for p in caught.value.problems] == ["systolic_bp"]


def test_a_string_value_names_the_observation_and_the_type_expected(
    fmap: FhirMap, signature: Signature
) -> None:
    bundle = example_bundle(now=NOW)
    resource = _glucose(bundle)["resource"]
    del resource["valueQuantity"]
    resource["valueString"] = "7.8 mmol/L"
    with pytest.raises(FhirInputError) as caught:
        bundle_to_records(bundle, fmap, signature, as_of=NOW)
    [problem] = caught.value.problems
    index = bundle["entry"].index(_glucose(bundle))
    assert problem.feature == "glucose"
    assert problem.message == (
        f"feature 'glucose': the Observation at Bundle.entry[{index}] (LOINC 14749-6) has a "
        "valueString; a valueQuantity in mg/dL (or a unit convertible to it) is expected"
    )
    assert problem.expression == f"Bundle.entry[{index}].resource.valueString"
    assert "7.8" not in problem.message  # values are never quoted

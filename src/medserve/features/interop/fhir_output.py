"""FHIR resources medserve answers with: RiskAssessment per patient, OperationOutcome for errors.

A RiskAssessment carries the model as a contained Device (name and version), the Observations
and Conditions it was computed from as ``basis``, and per prediction the outcome, the
probability, the qualitative risk from the version's risk bands and, when an explanation was
computed, the top contributing features in plain words as ``rationale``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from medserve.core.errors import MedserveError
from medserve.core.loaded_model import LoadedModel
from medserve.features.interop.feature_map import RISK_PROBABILITY_SYSTEM, FhirMap, fhir_map_of
from medserve.features.interop.fhir_input import FhirInputError, PatientInput, Problem

_ISSUE_TYPE = {
    "validation_failed": "invalid",
    "invalid_request": "invalid",
    "not_found": "not-found",
    "model_not_found": "not-found",
    "unsupported_media_type": "not-supported",
}


def operation_outcome(problems: list[Problem]) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": p.code,
                "diagnostics": p.message,
                **({"expression": [p.expression]} if p.expression else {}),
            }
            for p in problems
        ],
    }


def outcome_for_error(
    exc: MedserveError, patients: list[PatientInput] | None = None
) -> dict[str, Any]:
    """An OperationOutcome for any domain error; signature problems name the patient's entry."""
    if isinstance(exc, FhirInputError):
        return operation_outcome(exc.problems)
    problems: list[Problem] = []
    for detail in exc.details or []:
        row = detail.get("row")
        where = "Bundle"
        if patients is not None and isinstance(row, int) and 0 <= row < len(patients):
            where = f"Bundle.entry[{patients[row].entry}].resource"
        feature = detail.get("field")
        problems.append(
            Problem(
                "invalid" if detail.get("rule") != "required" else "required",
                f"feature {feature!r}: {detail.get('message', '')}" if feature else str(detail),
                where,
                feature,
            )
        )
    if not problems:
        problems.append(Problem(_ISSUE_TYPE.get(exc.code, "processing"), exc.message))
    return operation_outcome(problems)


def risk_assessment(
    *,
    model: str,
    version: int,
    runtime: str,
    fmap: FhirMap | None,
    probability: float,
    subject: dict[str, Any],
    basis: list[str],
    rationale: str | None,
    request_id: str,
    index: int,
    occurrence: datetime | None = None,
) -> dict[str, Any]:
    """One RiskAssessment (R4) for one patient and one model version."""
    outcome_map = fmap.outcome if fmap is not None else None
    outcome: dict[str, Any] = {"text": outcome_map.text if outcome_map else "risk"}
    if outcome_map is not None and outcome_map.code:
        outcome["coding"] = [
            {"system": outcome_map.system, "code": outcome_map.code, "display": outcome_map.text}
        ]
    prediction: dict[str, Any] = {"outcome": outcome, "probabilityDecimal": round(probability, 6)}
    band = fmap.band(probability) if fmap is not None else None
    if band is not None:
        prediction["qualitativeRisk"] = {
            "coding": [{"system": RISK_PROBABILITY_SYSTEM, "code": band.code}],
            "text": band.label or band.code,
        }
    if rationale:
        prediction["rationale"] = rationale
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": f"{request_id}-{index}",
        "contained": [
            {
                "resourceType": "Device",
                "id": "model",
                "deviceName": [{"name": f"medserve:{model}", "type": "model-name"}],
                "version": [{"value": str(version)}],
                "note": [{"text": f"served by medserve ({runtime})"}],
            }
        ],
        "identifier": [{"system": "urn:medserve:request", "value": f"{request_id}/{index}"}],
        "status": "final",
        "method": {"text": f"medserve model {model} version {version}"},
        "subject": subject,
        "occurrenceDateTime": (occurrence or datetime.now(UTC)).isoformat(timespec="seconds"),
        "performer": {"reference": "#model", "display": f"{model} v{version}"},
        "prediction": [prediction],
    }
    if basis:
        resource["basis"] = [{"reference": ref} for ref in basis]
    return resource


def collection(resources: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": request_id,
        "type": "collection",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "entry": [
            {"fullUrl": f"urn:medserve:{r['resourceType']}:{r['id']}", "resource": r}
            for r in resources
        ],
    }


_MAPS: dict[tuple[str, int], tuple[object, FhirMap | None]] = {}


def fhir_map(model: LoadedModel) -> FhirMap | None:
    """The version's feature map, parsed once per loaded version and checked against its
    signature (a map that does not fit is a configuration error, reported on every call)."""
    key = (model.name, model.number)
    cached = _MAPS.get(key)
    if cached is not None and cached[0] is model.version:
        return cached[1]
    fmap = fhir_map_of(model.version.serving_config)
    if fmap is not None:
        fmap.check_against(model.signature)
    _MAPS[key] = (model.version, fmap)
    return fmap


def positive_probability(
    model: LoadedModel, fmap: FhirMap | None, prediction: dict[str, Any]
) -> float:
    probabilities: dict[str, float] = prediction["probabilities"]
    wanted = fmap.positive_class if fmap is not None else None
    key = wanted if wanted in probabilities else (model.class_keys or list(probabilities))[-1]
    return float(probabilities[key])

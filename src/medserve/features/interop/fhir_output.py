"""FHIR resources medserve answers with: RiskAssessment per patient, OperationOutcome for errors.

A RiskAssessment carries the model as a contained Device (name and version), the Observations
and Conditions it was computed from as ``basis``, and per prediction the outcome, the
probability, the qualitative risk from the version's risk bands and, when an explanation was
computed, the top contributing features in plain words as ``rationale``.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from medserve.core.errors import MedserveError
from medserve.core.loaded_model import LoadedModel
from medserve.features.interop.feature_map import RISK_PROBABILITY_SYSTEM, FhirMap, fhir_map_of
from medserve.features.interop.fhir_input import FhirInputError, PatientInput, Problem

_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
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


def fhir_id_base(request_id: str, made_by_medserve: bool) -> str:
    """The stem of the FHIR ids of an answer (``[A-Za-z0-9-.]{1,64}`` with room for ``-<row>``):
    medserve's own request id (hex), else a fresh uuid. A caller's ``X-Request-ID`` is any text
    (an encounter number, say) and never becomes a resource id; answers still carry it in
    ``identifier``."""
    if made_by_medserve and _FHIR_ID.match(request_id) and len(request_id) <= 48:
        return request_id
    return uuid.uuid4().hex


@dataclass(frozen=True)
class OperatingThreshold:
    """The version's recorded operating point: its label is ``positive_class`` at
    ``P(positive_class) >= value``."""

    value: float
    positive_class: str

    def statement(self, version: int) -> str:
        return (
            f"positive ({self.positive_class}) at risk >= {self.value:g} "
            f"(operating threshold of version {version})"
        )

    def verdict(self, probability: float) -> str:
        side = "at or above" if probability >= self.value else "below"
        return f"{side} the operating threshold {self.value:g}"


def operating_threshold(model: LoadedModel, fmap: FhirMap | None) -> OperatingThreshold | None:
    """The threshold the served label used, when the version records one for the class whose
    probability the answer reports (None otherwise: nothing is claimed)."""
    if model.threshold is None:
        return None
    positive = model.positive_class
    reported = reported_class(model, fmap)
    if positive is not None and reported is not None and positive != reported:
        return None
    label = positive if positive is not None else reported
    return OperatingThreshold(model.threshold, label or "positive")


def reported_class(model: LoadedModel, fmap: FhirMap | None) -> str | None:
    """The class whose probability is the risk: the map's ``positive_class``, else the
    version's recorded positive class, else the last class."""
    wanted = fmap.positive_class if fmap is not None else None
    if wanted is None:
        wanted = model.positive_class
    keys = model.class_keys or []
    if wanted is not None and (not keys or wanted in keys):
        return wanted
    return keys[-1] if keys else None


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
    threshold: OperatingThreshold | None = None,
    fhir_id: str | None = None,
) -> dict[str, Any]:
    """One RiskAssessment (R4) for one patient and one model version. ``fhir_id`` is the stem
    of its id (:func:`fhir_id_base`); ``threshold`` is stated in a ``note`` (which side of it
    this risk is), so a reader knows where the served label flips."""
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
    notes: list[dict[str, Any]] = []
    if threshold is not None:
        stated = f"{threshold.statement(version)}; this risk is {threshold.verdict(probability)}"
        notes.append({"text": stated[:1].upper() + stated[1:] + "."})
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": f"{fhir_id or fhir_id_base(request_id, False)}-{index}",
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
    if notes:
        resource["note"] = notes
    return resource


def collection(resources: list[dict[str, Any]], fhir_id: str) -> dict[str, Any]:
    """A collection Bundle of ``resources``; ``fhir_id`` from :func:`fhir_id_base`."""
    return {
        "resourceType": "Bundle",
        "id": fhir_id,
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
    wanted = reported_class(model, fmap)
    key = wanted if wanted in probabilities else list(probabilities)[-1]
    return float(probabilities[key])

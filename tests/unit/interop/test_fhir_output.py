"""RiskAssessment out: the operating threshold named, ids that are FHIR ids."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any, cast

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.riskassessment import RiskAssessment

from medserve.core.loaded_model import LoadedModel
from medserve.faces.demo.interop import FHIR_MAP
from medserve.features.interop.feature_map import FhirMap
from medserve.features.interop.fhir_output import (
    OperatingThreshold,
    collection,
    fhir_id_base,
    operating_threshold,
    risk_assessment,
)

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
FMAP = FhirMap.model_validate(FHIR_MAP)


def _model(**fields: Any) -> LoadedModel:
    """What ``operating_threshold`` reads of a loaded version (no operating point by default)."""
    read = {"class_keys": ["0", "1"], "threshold": None, "positive_class": None} | fields
    return cast(LoadedModel, SimpleNamespace(**read))


def _assessment(probability: float, threshold: OperatingThreshold | None) -> dict[str, Any]:
    return risk_assessment(
        model="cardio-risk",
        version=3,
        runtime="onnx",
        fmap=FMAP,
        probability=probability,
        subject={"reference": "Patient/p1"},
        basis=[],
        rationale=None,
        request_id="019a2b3c4d5e6f708192a3b4c",
        index=0,
        threshold=threshold,
        fhir_id="019a2b3c4d5e6f708192a3b4c",
    )


@pytest.mark.parametrize(("probability", "side"), [(0.35, "at or above"), (0.2, "below")])
def test_the_operating_threshold_is_named_in_a_valid_risk_assessment(
    probability: float, side: str
) -> None:
    threshold = operating_threshold(_model(threshold=0.31, positive_class="1"), FMAP)
    assert threshold == OperatingThreshold(0.31, "1")
    resource = _assessment(probability, threshold)
    assessment = RiskAssessment.model_validate(resource)
    [note] = assessment.note or []
    assert note.text == (
        "Positive (1) at risk >= 0.31 (operating threshold of version 3); "
        f"this risk is {side} the operating threshold 0.31."
    )
    assert "note" not in _assessment(probability, None)


def test_no_threshold_claimed_without_one_or_for_another_class() -> None:
    assert operating_threshold(_model(), FMAP) is None  # a version without an operating point
    assert operating_threshold(_model(threshold=None, positive_class="1"), FMAP) is None
    # recorded for class "0" while the answer reports P(class "1"): not this probability's
    assert operating_threshold(_model(threshold=0.4, positive_class="0"), FMAP) is None


def test_a_callers_request_id_never_becomes_a_fhir_id() -> None:
    caller = "encounter 4455/ä! " + "x" * 80
    stem = fhir_id_base(caller, made_by_medserve=False)
    assert FHIR_ID.match(stem)
    assert caller not in stem
    own = "019a2b3c4d5e6f708192a3b4c"
    assert fhir_id_base(own, made_by_medserve=True) == own  # findable from the request id
    resource = risk_assessment(
        model="cardio-risk",
        version=1,
        runtime="onnx",
        fmap=FMAP,
        probability=0.2,
        subject={"reference": "Patient/p1"},
        basis=[],
        rationale=None,
        request_id=caller,
        index=12,
        fhir_id=stem,
    )
    bundle = collection([resource], stem)
    Bundle.model_validate(bundle)  # ids of Bundle and RiskAssessment are FHIR ids
    assert FHIR_ID.match(resource["id"])
    assert FHIR_ID.match(bundle["id"])
    assert resource["identifier"][0]["value"] == f"{caller}/12"  # the caller's id, as data

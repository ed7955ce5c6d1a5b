"""CDS Hooks pieces without a server: prefetch templates, the prefetch Bundle, feedback rules,
cards (threshold, links)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest

from medserve.core.errors import InvalidRequestError
from medserve.core.loaded_model import LoadedModel
from medserve.core.registry.signature import Signature, infer_signature
from medserve.faces.demo.interop import (
    FEATURES,
    FHIR_MAP,
    example_hook_request,
    synthetic_cohort,
)
from medserve.features.interop.cds_hooks import (
    CdsHooks,
    CdsService,
    bundle_from_prefetch,
    prefetch_templates,
)
from medserve.features.interop.feature_map import FhirMap
from medserve.features.interop.fhir_input import bundle_to_records
from medserve.features.interop.fhir_output import OperatingThreshold

FMAP = FhirMap.model_validate(FHIR_MAP)


@pytest.fixture(scope="module")
def signature() -> Signature:
    return infer_signature(synthetic_cohort(300)[FEATURES])


def test_prefetch_templates_search_by_patient_with_encoded_tokens(signature: Signature) -> None:
    templates, required = prefetch_templates(FMAP, signature)
    assert templates["patient"] == "Patient/{{context.patientId}}"
    assert templates["obs-glucose"] == (
        "Observation?patient={{context.patientId}}"
        "&code=http://loinc.org%7C2345-7,http://loinc.org%7C14749-6&_sort=-date&_count=100"
    )
    assert templates["cond-hypertension"] == (
        "Condition?patient={{context.patientId}}&code=38341003,I10"
    )
    assert all("|" not in t and "subject=" not in t for t in templates.values())
    assert "obs-bmi" in required


def test_a_panel_under_two_prefetch_keys_counts_once(signature: Signature) -> None:
    request = example_hook_request("p7")
    prefetch = request["prefetch"]
    # a standalone systolic reading, only in the systolic search; the two BP panels are in
    # both the systolic and the diastolic searches (as a FHIR server answers them)
    standalone = copy.deepcopy(prefetch["obs-systolic_bp"]["entry"][0])
    resource = standalone["resource"]
    resource.update(
        id="p7-sys",
        code={"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        valueQuantity={
            "value": 170,
            "unit": "mmHg",
            "system": "http://unitsofmeasure.org",
            "code": "mm[Hg]",
        },
    )
    del resource["component"]
    standalone["fullUrl"] = "http://ehr.example/fhir/Observation/p7-sys"
    prefetch["obs-systolic_bp"]["entry"].append(standalone)
    bundle = bundle_from_prefetch(prefetch)
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert len(ids) == len(set(ids))
    [patient] = bundle_to_records(bundle, FMAP, signature, as_of=datetime.now(UTC))
    assert patient.record["systolic_bp"] == pytest.approx((152 + 146 + 170) / 3)
    assert patient.record["diastolic_bp"] == pytest.approx((91 + 88) / 2)


def test_prefetch_resources_are_named_on_the_client_server(signature: Signature) -> None:
    prefetch = example_hook_request("p8")["prefetch"]
    prefetch["obs-bmi"] = None  # the client has no BMI: skipped, not an error here
    bundle = bundle_from_prefetch(prefetch, "https://ehr.example/fhir/")
    assert {e["fullUrl"].rsplit("/", 2)[0] for e in bundle["entry"]} == {"https://ehr.example/fhir"}
    assert "39156-5" not in str(bundle)
    # the searchsets' relative references resolve against that server
    fmap = FMAP.model_copy(deep=True)
    del fmap.features["bmi"]
    [patient] = bundle_to_records(bundle, fmap, signature, as_of=datetime.now(UTC))
    assert patient.reference == "https://ehr.example/fhir/Patient/p8"
    assert patient.record["hypertension"] == 1


class _Store:
    def __init__(self) -> None:
        self.stored: list[Any] = []

    def record_feedback(self, service_id: str, items: list[Any], actor: str) -> list[Any]:
        self.stored.extend(items)
        return [SimpleNamespace(model_name="m", version=1) for _ in items]


def _hooks() -> tuple[CdsHooks, _Store]:
    store = _Store()
    return CdsHooks(cast(Any, None), cast(Any, store), cast(Any, None)), store


SERVICE = CdsService("m", "patient-view", "m", 1, "t", "d", {}, frozenset())
WHEN = "2026-11-30T10:00:00Z"


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"card": "c1", "outcome": "overridden"}, "feedback.0.outcomeTimestamp"),
        (
            {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-11-30"},
            "feedback.0.outcomeTimestamp",
        ),
        (
            {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-11-30T10:00:00"},
            "feedback.0.outcomeTimestamp",
        ),
        ({"card": "c1", "outcome": "accepted", "outcomeTimestamp": WHEN}, "feedback.0"),
        (
            {
                "card": "c1",
                "outcome": "accepted",
                "outcomeTimestamp": WHEN,
                "acceptedSuggestions": [{"id": "s1"}],
            },
            "feedback.0.acceptedSuggestions.0.id",
        ),
        (
            {
                "card": "c1",
                "outcome": "accepted",
                "outcomeTimestamp": WHEN,
                "acceptedSuggestions": [{}],
            },
            "feedback.0.acceptedSuggestions.0.id",
        ),
    ],
)
def test_feedback_is_validated_as_cds_hooks_defines_it(item: dict[str, Any], field: str) -> None:
    hooks, store = _hooks()
    with pytest.raises(InvalidRequestError) as caught:
        hooks.feedback(SERVICE, {"feedback": [item]}, "key:test")
    assert field in [d["field"] for d in caught.value.details], caught.value.details
    assert store.stored == []


def test_valid_feedback_is_stored_with_its_time_in_utc() -> None:
    hooks, store = _hooks()
    body = {
        "feedback": [
            {
                "card": "c1",
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-30T11:00:00+01:00",
            },
            {
                "card": "c2",
                "outcome": "accepted",
                "acceptedSuggestions": [],
                "outcomeTimestamp": WHEN,
            },
        ]
    }
    assert hooks.feedback(SERVICE, body, "key:test") == {"stored": 2}
    assert [f.outcome_at for f in store.stored] == [datetime(2026, 11, 30, 10, tzinfo=UTC)] * 2


def _model() -> LoadedModel:
    return cast(LoadedModel, SimpleNamespace(name="cardio-risk", number=4))


def test_the_card_names_the_operating_threshold() -> None:
    hooks, _ = _hooks()
    threshold = OperatingThreshold(0.31, "1")
    card = hooks._card(_model(), FMAP, 0.35, None, None, threshold)
    assert len(card["summary"]) < 140
    assert card["summary"].endswith("(35%, at/above the 31% threshold)")
    assert (
        "positive (1) at risk >= 0.31 (31%), the operating threshold of version 4: this risk "
        "is at or above the operating threshold 0.31." in card["detail"]
    )
    below = hooks._card(_model(), FMAP, 0.12, None, None, threshold)
    assert "below the 31% threshold" in below["summary"]
    plain = hooks._card(_model(), FMAP, 0.12, None, None, None)
    assert "threshold" not in plain["summary"] + plain["detail"]


def test_card_links_only_where_the_public_url_is_set() -> None:
    hooks, _ = _hooks()
    unset = hooks._card(_model(), FMAP, 0.2, None, None)
    assert "url" not in unset["source"]
    assert unset["source"]["label"] == "medserve: cardio-risk v4"
    configured = hooks._card(_model(), FMAP, 0.2, None, "https://medserve.example")
    assert configured["source"]["url"] == (
        "https://medserve.example/v1/models/cardio-risk/versions/4/card?format=html"
    )

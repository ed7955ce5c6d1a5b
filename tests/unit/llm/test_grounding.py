"""Grounded answers over a FHIR Bundle, with scripted runtimes (``tests/grounding_fake.py``):
the Bundle as texts, retrieval by embedding similarity, citations constrained to the retrieved
resources, the refusal (and flag) of an answer that cites nothing it retrieved, and nothing of
the Bundle in the audit trail."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests import grounding_fake
from tests.unit.serving.inprocess_app import create_key, registry_at, serve

from medserve.core.errors import InvalidRequestError
from medserve.core.extensions import extensions
from medserve.features.llm import grounding
from medserve.serving.extensions.security import AUDIT_LOG

PATIENT_NAME = "Zebediah Quillfeather"
BUNDLE: dict[str, Any] = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        {
            "resource": {
                "resourceType": "Patient",
                "id": "pat-1",
                "name": [{"family": "Quillfeather", "given": ["Zebediah"]}],
                "gender": "male",
                "birthDate": "1961-04-02",
            }
        },
        {
            "resource": {
                "resourceType": "Condition",
                "id": "cond-dm",
                "code": {"text": "Type 2 diabetes mellitus"},
                "clinicalStatus": {"coding": [{"code": "active"}]},
                "onsetDateTime": "2019-03-01",
            }
        },
        {
            "resource": {
                "resourceType": "MedicationRequest",
                "id": "med-metformin",
                "status": "active",
                "medicationCodeableConcept": {"text": "metformin 500 mg tablet"},
                "dosageInstruction": [{"text": "500 mg twice daily (dose)"}],
                "authoredOn": "2023-05-10",
            }
        },
        {
            "resource": {
                "resourceType": "AllergyIntolerance",
                "id": "allergy-pcn",
                "code": {"text": "penicillin"},
                "reaction": [{"manifestation": [{"text": "rash"}]}],
            }
        },
        {
            "resource": {
                "resourceType": "Observation",
                "id": "obs-bp",
                "status": "final",
                "code": {"text": "blood pressure systolic"},
                "valueQuantity": {"value": 148, "unit": "mmHg"},
                "effectiveDateTime": "2024-01-12",
            }
        },
        {
            "resource": {
                "resourceType": "MedicationRequest",
                "id": "med-lisinopril",
                "status": "active",
                "medicationCodeableConcept": {"text": "lisinopril 10 mg"},
                "dosageInstruction": [{"text": "10 mg once daily for hypertension"}],
            }
        },
    ],
}
QUESTION = "What metformin dose is the patient on?"


# -- pure parts ---------------------------------------------------------------------------------


def test_the_bundle_becomes_texts_without_the_patients_identity() -> None:
    items = grounding.bundle_resources(BUNDLE)
    assert [r.label for r in items] == ["R1", "R2", "R3", "R4", "R5", "R6"]
    assert items[2].reference == "MedicationRequest/med-metformin"
    assert items[0].text == "Patient: gender male, born 1961"
    assert "metformin 500 mg tablet" in items[2].text
    assert "500 mg twice daily" in items[2].text
    assert "value 148 mmHg" in items[4].text
    assert "reaction rash" in items[3].text
    for item in items:
        assert "Quillfeather" not in item.text
        assert "pat-1" not in item.text


@pytest.mark.parametrize(
    ("bundle", "field"),
    [
        ({"resourceType": "Patient"}, "bundle.resourceType"),
        ({"resourceType": "Bundle", "entry": []}, "bundle.entry"),
        (
            {"resourceType": "Bundle", "entry": [{"resource": {"id": "x"}}]},
            "bundle.entry[0].resource",
        ),
        (
            {
                "resourceType": "Bundle",
                "entry": [{"resource": {"resourceType": "Condition", "id": "a"}}] * 2,
            },
            "bundle.entry[1].resource.id",
        ),
    ],
)
def test_a_bad_bundle_is_refused_naming_the_field(bundle: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        grounding.bundle_resources(bundle)
    assert refused.value.details[0]["field"] == field


def test_a_malformed_resource_reads_as_less_text_never_a_crash() -> None:
    """A client's Bundle is not trusted to be valid FHIR: lists that are not lists, items that
    are not objects, are skipped (the server answers; it does not fail with a 500)."""
    strange = {
        "resourceType": "AllergyIntolerance",
        "id": "odd",
        "code": {"coding": ["peanut", {"display": "peanut allergy"}]},
        "reaction": ["bad", {"manifestation": "hives"}, {"manifestation": [7, {"text": "rash"}]}],
        "dosageInstruction": {"text": "not a list"},
        "note": "not a list",
        "effectivePeriod": {"start": 3},
    }
    bundle = {"resourceType": "Bundle", "entry": [{"resource": strange}]}
    (item,) = grounding.bundle_resources(bundle)
    assert item.text == "AllergyIntolerance: peanut allergy; reaction rash; from 3"


def test_retrieval_ranks_by_cosine() -> None:
    texts = np.asarray([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    assert [i for i, _ in grounding.retrieve(np.asarray([0.0, 2.0]), texts, 2)] == [2, 1]


def test_interpret_maps_citations_and_refuses_or_flags_what_is_not_grounded() -> None:
    retrieved = grounding.bundle_resources(BUNDLE)[1:3]  # R2, R3
    ok = grounding.interpret('{"answer": "500 mg", "citations": ["R3"]}', retrieved, "refuse")
    assert ok.status == "answered"
    assert [r.reference for r in ok.citations] == ["MedicationRequest/med-metformin"]
    for content in (
        '{"answer": "500 mg", "citations": []}',
        '{"answer": "x", "citations": ["R5"]}',
    ):
        assert grounding.interpret(content, retrieved, "refuse").status == "refused"
        assert grounding.interpret(content, retrieved, "refuse").answer is None
        flagged = grounding.interpret(content, retrieved, "flag")
        assert flagged.status == "flagged"
        assert flagged.answer is not None
    assert grounding.interpret("not json", retrieved, "flag").status == "refused"


# -- through the HTTP API, in process -----------------------------------------------------------


@pytest.fixture
def grounded_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = grounding_fake.install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    extensions.cache_clear()
    grounding_fake.RECEIVED.clear()
    grounding_fake.PARAMS.clear()
    home = tmp_path / "home"
    with registry_at(home) as registry:
        grounding_fake.register(registry, "keywords")
        grounding_fake.register(
            registry, "grounded", reply='{"answer": "500 mg twice daily", "citations": ["R3"]}'
        )
        grounding_fake.register(
            registry, "wanders", reply='{"answer": "take 40 mg", "citations": ["R6"]}'
        )
        grounding_fake.register(registry, "uncited", reply='{"answer": "no idea", "citations": []}')
    yield home
    extensions.cache_clear()


def _ask(client: Any, headers: dict[str, str], model: str, **extra: Any) -> Any:
    body = {
        "bundle": BUNDLE,
        "question": QUESTION,
        "embedding_model": "keywords",
        "top_k": 2,
        **extra,
    }
    return client.post(f"/v1/models/{model}/fhir-answer", json=body, headers=headers)


def test_an_answer_cites_only_retrieved_bundle_resources(grounded_home: Path) -> None:
    with serve(grounded_home, security=True) as (client, resources):
        headers = create_key(grounded_home, ["app"])
        answer = _ask(client, headers, "grounded")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "answered"
        assert body["grounded"] is True
        assert body["answer"] == "500 mg twice daily"
        assert body["citations"] == [
            {
                "reference": "MedicationRequest/med-metformin",
                "resourceType": "MedicationRequest",
                "label": "R3",
            }
        ]
        retrieved = [r["reference"] for r in body["retrieved"]]
        assert retrieved[0] == "MedicationRequest/med-metformin"  # the most similar first
        assert len(retrieved) == 2
        # the grammar lets the model cite the retrieved labels and nothing else
        grammar = grounding_fake.PARAMS[-1].grammar
        assert grammar is not None
        labels = {r["label"] for r in body["retrieved"]}
        assert set(re.findall(r"R\d+", grammar)) == labels
        # the model saw the retrieved texts under their labels, no name and no resource id
        seen = json.dumps(grounding_fake.RECEIVED[-1])
        assert "R3: MedicationRequest: metformin 500 mg tablet" in seen
        for hidden in ("Quillfeather", "med-metformin", "pat-1", "penicillin"):
            assert hidden not in seen

        audit = resources.get(AUDIT_LOG)
        audit.flush()
        entries = [e for e in audit.entries() if str(e["action"]).startswith("llm.")]
    actions = {e["action"] for e in entries}
    assert {"llm.fhir_answer", "llm.chat", "llm.embeddings"} <= actions
    outcome = next(json.loads(e["detail"]) for e in entries if e["action"] == "llm.fhir_answer")
    assert outcome["status"] == "answered"
    assert (outcome["resources"], outcome["retrieved"], outcome["cited"]) == (6, 2, 1)
    assert outcome["bundle_hmac"].startswith("hm_")
    trail = json.dumps(entries)
    for kept_out in ("metformin", "Quillfeather", "500 mg", "med-metformin", "diabetes"):
        assert kept_out not in trail


def test_an_answer_citing_nothing_it_retrieved_is_refused_or_flagged(grounded_home: Path) -> None:
    with serve(grounded_home, security=True) as (client, _):
        headers = create_key(grounded_home, ["app"])
        wandered = _ask(client, headers, "wanders").json()  # cites R6, not retrieved
        assert wandered["status"] == "refused"
        assert wandered["answer"] is None
        assert wandered["citations"] == []
        assert wandered["unknown_citations"] == ["R6"]
        assert wandered["reason"] == "the answer cites entries that were not retrieved"

        uncited = _ask(client, headers, "uncited").json()
        assert (uncited["status"], uncited["answer"]) == ("refused", None)
        assert uncited["reason"] == "the answer cites nothing it retrieved"

        flagged = _ask(client, headers, "uncited", on_uncited="flag").json()
        assert flagged["status"] == "flagged"
        assert flagged["grounded"] is False
        assert flagged["answer"] == "no idea"


def test_bad_requests_are_400_naming_the_field(grounded_home: Path) -> None:
    with serve(grounded_home, security=True) as (client, _):
        headers = create_key(grounded_home, ["app"])
        bad = _ask(client, headers, "grounded", bundle={"resourceType": "Patient"})
        assert bad.status_code == 400
        assert "bundle" in bad.json()["error"]["message"]
        wrong = _ask(client, headers, "grounded", embedding_model="grounded")
        assert wrong.status_code == 400
        assert "embedding_model" in wrong.json()["error"]["message"]
        extra = _ask(client, headers, "grounded", top_k=0)
        assert extra.status_code == 400
        assert "top_k" in extra.json()["error"]["message"]
        missing = _ask(client, headers, "no-such-model")
        assert missing.status_code == 404
        assert client.post(
            "/v1/models/grounded/fhir-answer", json={"bundle": BUNDLE, "question": QUESTION}
        ).status_code in (401, 403)

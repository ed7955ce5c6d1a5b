"""Answers grounded in one patient's record: a FHIR Bundle and a question in, an answer with
citations to the Bundle's resources out (``POST /v1/models/{name}/fhir-answer``).

Transport-free; ``serving/extensions/llm_grounding.py`` runs the steps through the same
pipeline as the OpenAI-compatible API (PHI policy, budgets, audit):

1. ``bundle_resources``: each resource of the Bundle becomes one short text (what a clinician
   reads in it: code, value, status, dates, dosage; never names, addresses or identifiers);
2. the question and the texts are embedded by an embedding model (MiniLM in process), and the
   ``top_k`` resources most similar to the question (cosine) are retrieved, in memory for this
   request only;
3. the chat model sees the retrieved texts under local labels (``R1``... ``Rk``; never the
   resources' own ids, which may carry identifiers) and must answer as JSON
   ``{"answer": ..., "citations": [...]}``, the citations constrained by a JSON schema whose
   ``enum`` lists the retrieved labels only (turned into a llama.cpp grammar: the model cannot
   write another label);
4. ``interpret``: the citations are mapped back to the Bundle's ids; an answer that cites
   nothing it retrieved (no citation, or a label outside the retrieved ones, possible with a
   runtime that ignores grammars) is refused, or with ``on_uncited: "flag"`` returned marked
   ungrounded.

Nothing of the Bundle is kept: the audit entries hold counts and keyed hashes only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medserve.core.errors import InvalidRequestError
from medserve.features.llm.invalid import invalid_request

MAX_RESOURCES = 2000
MAX_TEXT = 600  # characters of one resource's text

SYSTEM_PROMPT = (
    "You answer a clinician's question about one patient using ONLY the numbered record "
    'entries given. Reply as JSON: {"answer": a short answer, "citations": the labels '
    '(like "R1") of the entries that support it}. If the entries do not answer the '
    "question, say so in the answer and cite nothing."
)


class FhirAnswerRequest(BaseModel):
    """The body of ``POST /v1/models/{name}/fhir-answer``."""

    model_config = ConfigDict(extra="forbid")

    bundle: dict[str, Any] = Field(
        description="A FHIR R4 Bundle: one patient's record.",
        json_schema_extra={
            "required": ["resourceType", "entry"],
            "properties": {
                "resourceType": {"const": "Bundle"},
                "entry": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_RESOURCES,
                    "items": {
                        "type": "object",
                        "required": ["resource"],
                        "properties": {
                            "resource": {
                                "type": "object",
                                "required": ["resourceType"],
                                "properties": {
                                    "resourceType": {"type": "string", "minLength": 1},
                                    "id": {"type": "string", "minLength": 1},
                                },
                            }
                        },
                    },
                },
            },
        },
    )
    question: str = Field(min_length=1, max_length=2000)
    embedding_model: str = Field(
        default="minilm-embeddings",
        min_length=1,
        max_length=300,
        description="The embedding model that retrieves (name, name@alias or name@version).",
    )
    top_k: int = Field(default=5, ge=1, le=20, description="Resources retrieved and shown.")
    max_tokens: int = Field(default=256, ge=16, le=4096)
    temperature: float = Field(default=0.0, ge=0, le=2)
    seed: int | None = 0
    on_uncited: Literal["refuse", "flag"] = Field(
        default="refuse",
        description="An answer that cites nothing it retrieved: refused (no answer), or "
        "returned with grounded=false.",
    )


def parse_request(body: Any) -> FhirAnswerRequest:
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    try:
        return FhirAnswerRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_request(exc, where_empty="(body)") from exc


@dataclass(frozen=True)
class Resource:
    label: str  # R1, R2, ... in Bundle order
    reference: str  # the Bundle's own id: "Condition/c1"
    resource_type: str
    text: str


# -- the Bundle as texts ------------------------------------------------------------------------


def _objects(value: Any) -> list[dict[str, Any]]:
    """The objects of a FHIR list element; what is not one (a client's malformed Bundle) is
    skipped, so a strange resource reads as less text, never as a server error."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _concept(value: Any) -> str:
    """A CodeableConcept (or a list of them) as words: its text, else its codings' displays."""
    if isinstance(value, list):
        return "; ".join(filter(None, (_concept(v) for v in value)))
    if not isinstance(value, dict):
        return ""
    if isinstance(value.get("text"), str):
        return str(value["text"])
    shown = [str(c.get("display") or c.get("code") or "") for c in _objects(value.get("coding"))]
    return ", ".join(s for s in shown if s)


def _quantity(value: Any) -> str:
    if not isinstance(value, dict) or "value" not in value:
        return ""
    unit = value.get("unit") or value.get("code") or ""
    return f"{value['value']} {unit}".strip()


def _value(resource: dict[str, Any]) -> str:
    for key in ("valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean",
                "valueInteger", "valueDateTime"):  # fmt: skip
        if key in resource:
            item = resource[key]
            if key == "valueQuantity":
                return _quantity(item)
            if key == "valueCodeableConcept":
                return _concept(item)
            return str(item)
    return ""


def _dosage(resource: dict[str, Any]) -> str:
    parts = []
    for dose in _objects(resource.get("dosageInstruction") or resource.get("dosage")):
        if isinstance(dose.get("text"), str):
            parts.append(dose["text"])
    return "; ".join(parts)


def _date(resource: dict[str, Any]) -> str:
    for key in ("effectiveDateTime", "onsetDateTime", "authoredOn", "recordedDate", "issued",
                "performedDateTime", "occurrenceDateTime", "date"):  # fmt: skip
        if isinstance(resource.get(key), str):
            return f"{key.removesuffix('DateTime')}: {resource[key]}"
    period = resource.get("effectivePeriod") or resource.get("period")
    if isinstance(period, dict) and period.get("start"):
        return f"from {period['start']}" + (f" to {period['end']}" if period.get("end") else "")
    return ""


def describe(resource: dict[str, Any]) -> str:
    """What a clinician reads in ``resource``, in one line. A Patient is reduced to its gender
    and year of birth (the minimum necessary: never its name, address or identifiers)."""
    kind = str(resource.get("resourceType", "Resource"))
    if kind == "Patient":
        born = str(resource.get("birthDate") or "")[:4]
        return f"Patient: gender {resource.get('gender', 'unknown')}" + (
            f", born {born}" if born else ""
        )
    parts = [kind]
    concept = _concept(
        resource.get("code")
        or resource.get("medicationCodeableConcept")
        or resource.get("vaccineCode")
        or resource.get("type")
    )
    if concept:
        parts.append(concept)
    value = _value(resource)
    if value:
        parts.append(f"value {value}")
    for key in ("clinicalStatus", "verificationStatus", "interpretation", "criticality"):
        shown = _concept(resource.get(key)) if not isinstance(resource.get(key), str) else ""
        if shown:
            parts.append(f"{key} {shown}")
    if isinstance(resource.get("status"), str):
        parts.append(f"status {resource['status']}")
    if isinstance(resource.get("criticality"), str):
        parts.append(f"criticality {resource['criticality']}")
    reactions = [
        _concept(m)
        for r in _objects(resource.get("reaction"))
        for m in _objects(r.get("manifestation"))
    ]
    if any(reactions):
        parts.append("reaction " + ", ".join(r for r in reactions if r))
    dosage = _dosage(resource)
    if dosage:
        parts.append(f"dosage {dosage}")
    when = _date(resource)
    if when:
        parts.append(when)
    for note in _objects(resource.get("note")):
        if isinstance(note.get("text"), str):
            parts.append(f"note {note['text']}")
    return ": ".join(parts[:2]) + ("; " + "; ".join(parts[2:]) if len(parts) > 2 else "")


def bundle_resources(bundle: dict[str, Any]) -> list[Resource]:
    """The Bundle's resources as texts, in order; a 400 naming the entry that is wrong."""
    if bundle.get("resourceType") != "Bundle":
        raise InvalidRequestError(
            "bundle: a FHIR Bundle is expected (resourceType 'Bundle')",
            details=[{"field": "bundle.resourceType", "rule": "must be 'Bundle'"}],
        )
    entries = bundle.get("entry") or []
    if not isinstance(entries, list) or not entries:
        raise InvalidRequestError(
            "bundle.entry: the Bundle has no entry",
            details=[{"field": "bundle.entry", "rule": "at least one resource"}],
        )
    if len(entries) > MAX_RESOURCES:
        raise InvalidRequestError(
            f"bundle.entry: {len(entries)} entries, at most {MAX_RESOURCES}",
            details=[{"field": "bundle.entry", "rule": f"at most {MAX_RESOURCES}"}],
        )
    found: list[Resource] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise InvalidRequestError(
                f"bundle.entry[{i}].resource: a resource with a resourceType is expected",
                details=[{"field": f"bundle.entry[{i}].resource", "rule": "required"}],
            )
        kind = resource["resourceType"]
        rid = resource.get("id")
        reference = f"{kind}/{rid}" if isinstance(rid, str) and rid else f"{kind}/#entry{i}"
        if reference in seen:
            raise InvalidRequestError(
                f"bundle.entry[{i}].resource.id: {kind} id repeated in the Bundle",
                details=[{"field": f"bundle.entry[{i}].resource.id", "rule": "unique"}],
            )
        seen.add(reference)
        text = describe(resource)[:MAX_TEXT]
        found.append(Resource(f"R{len(found) + 1}", reference, kind, text))
    return found


# -- retrieval ------------------------------------------------------------------------------


def retrieve(question: np.ndarray, texts: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` rows of ``texts`` most similar to ``question`` (cosine), best first."""
    q = np.asarray(question, dtype=np.float64).ravel()
    m = np.asarray(texts, dtype=np.float64)
    norms = np.linalg.norm(m, axis=1) * (np.linalg.norm(q) or 1.0)
    scores = (m @ q) / np.where(norms == 0, 1.0, norms)
    order = np.argsort(-scores, kind="stable")[:k]
    return [(int(i), float(scores[i])) for i in order]


def citation_schema(labels: Sequence[str]) -> dict[str, Any]:
    """The answer's JSON schema: citations only among ``labels`` (an ``enum``)."""
    return {
        "type": "object",
        "properties": {
            "answer": {"type": "string"},
            "citations": {
                "type": "array",
                "items": {"type": "string", "enum": list(labels)},
                "maxItems": len(labels),
            },
        },
        "required": ["answer", "citations"],
        "additionalProperties": False,
    }


def user_prompt(question: str, retrieved: Sequence[Resource]) -> str:
    lines = [f"{r.label}: {r.text}" for r in retrieved]
    return "Record entries:\n" + "\n".join(lines) + f"\n\nQuestion: {question}"


# -- the answer -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Grounded:
    status: Literal["answered", "flagged", "refused"]
    answer: str | None
    citations: list[Resource]
    reason: str | None
    uncited_labels: list[str]


def interpret(
    content: str, retrieved: Sequence[Resource], on_uncited: Literal["refuse", "flag"]
) -> Grounded:
    """The model's JSON answer checked against what was retrieved (see the module docstring)."""
    by_label = {r.label: r for r in retrieved}
    try:
        value = json.loads(content)
    except ValueError:
        return Grounded("refused", None, [], "the model's answer is not the JSON asked for", [])
    if not isinstance(value, dict) or not isinstance(value.get("answer"), str):
        return Grounded("refused", None, [], "the model's answer has no 'answer' text", [])
    raw = value.get("citations")
    labels = [str(c) for c in raw] if isinstance(raw, list) else []
    cited = [by_label[c] for c in dict.fromkeys(labels) if c in by_label]
    unknown = [c for c in dict.fromkeys(labels) if c not in by_label]
    problem = None
    if unknown:
        problem = "the answer cites entries that were not retrieved"
    elif not cited:
        problem = "the answer cites nothing it retrieved"
    if problem is None:
        return Grounded("answered", value["answer"], cited, None, [])
    if on_uncited == "flag":
        return Grounded("flagged", value["answer"], cited, problem, unknown)
    return Grounded("refused", None, [], problem, unknown)

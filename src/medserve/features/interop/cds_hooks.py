"""CDS Hooks 2.0 service: discovery, hook calls answered with cards, and card feedback.

A model version serves CDS hooks when its FHIR feature map names them (``hooks:
[patient-view]``); the service is whatever version the model's ``production`` alias points at,
so a promotion moves the CDS service with it. Prefetch templates come from the feature map.
When the client's prefetch lacks something required, medserve queries the client's
``fhirServer`` only if that server is on the ``MEDSERVE_CDS_FHIR_SERVERS`` allowlist; otherwise
it answers 412 as the specification asks. Nothing of the hook request is stored: only the ids
of the cards issued (for feedback) and the feedback itself, with its free-text comment
de-identified.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medserve.core.context import RequestContext
from medserve.core.errors import (
    InvalidRequestError,
    NotFoundError,
    PreconditionFailedError,
    ValidationFailedError,
)
from medserve.core.inference import ModelServer, Rationales
from medserve.core.loaded_model import LoadedModel
from medserve.core.phi import deidentify_text
from medserve.core.registry.signature import Signature
from medserve.core.store.feedback import CdsStore, Feedback, IssuedCard
from medserve.features.interop import metrics
from medserve.features.interop.feature_map import LOINC, FhirMap
from medserve.features.interop.fhir_input import (
    FhirInputError,
    bundle_to_records,
    parse_fhir_datetime,
)
from medserve.features.interop.fhir_output import fhir_map, positive_probability

SERVICE_ALIAS = "production"
# Blood-pressure components live inside the panel Observation: search for the panel too.
_PANELS = {"8480-6": "85354-9", "8462-4": "85354-9"}
OVERRIDE_SYSTEM = "urn:medserve:cds-override-reason"
OVERRIDE_REASONS = [
    {"system": OVERRIDE_SYSTEM, "code": "not-relevant", "display": "Not relevant for this patient"},
    {"system": OVERRIDE_SYSTEM, "code": "disagree", "display": "Clinically disagree"},
    {"system": OVERRIDE_SYSTEM, "code": "data-wrong", "display": "Input data wrong or outdated"},
    {"system": OVERRIDE_SYSTEM, "code": "already-addressed", "display": "Already addressed"},
]


@dataclass(frozen=True)
class CdsService:
    id: str
    hook: str
    model: str
    version: int
    title: str
    description: str
    prefetch: dict[str, str]
    required: frozenset[str]

    def discovery(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": self.prefetch,
            "usageRequirements": (
                f"Scores with medserve model {self.model} (its production version); "
                "needs the prefetch listed, or a FHIR server medserve is allowed to query."
            ),
        }


def prefetch_templates(fmap: FhirMap, signature: Signature) -> tuple[dict[str, str], set[str]]:
    """Prefetch templates from the feature map, and which of them a score cannot do without."""
    patient = "{{context.patientId}}"
    templates = {"patient": f"Patient/{patient}"}
    required = {"patient"}
    specs = {f.name: f for f in signature.inputs}
    for name, source in fmap.features.items():
        spec = specs.get(name)
        needed = spec is None or spec.missing != "impute"
        key = None
        if source.loinc:
            codes = list(
                dict.fromkeys([*source.loinc, *(_PANELS[c] for c in source.loinc if c in _PANELS)])
            )
            key = f"obs-{name}"
            templates[key] = (
                f"Observation?subject={patient}&code="
                + ",".join(f"{LOINC}|{c}" for c in codes)
                + "&_sort=-date&_count=100"
            )
        elif source.condition:
            key = f"cond-{name}"
            templates[key] = f"Condition?patient={patient}&code=" + ",".join(source.condition)
        if key is not None and needed:
            required.add(key)
    return templates, required


def service_id(model: str, hook: str, hooks: list[str]) -> str:
    return model if hooks and hook == hooks[0] else f"{model}--{hook}"


def services_of(model: LoadedModel) -> list[CdsService]:
    fmap = fhir_map(model)
    if fmap is None or not fmap.hooks:
        return []
    templates, required = prefetch_templates(fmap, model.signature)
    title = fmap.title or f"{model.name}: {fmap.outcome.text}"
    description = fmap.description or (
        f"Risk of {fmap.outcome.text} from medserve model {model.name} "
        f"(version {model.number}, {model.metadata.runtime})."
    )
    return [
        CdsService(
            id=service_id(model.name, hook, fmap.hooks),
            hook=hook,
            model=model.name,
            version=model.number,
            title=title,
            description=description,
            prefetch=templates,
            required=frozenset(required),
        )
        for hook in fmap.hooks
    ]


class HookRequest(BaseModel):
    """The CDS Hooks 2.0 request body (fields medserve reads; others are allowed)."""

    model_config = ConfigDict(extra="allow")

    hook: str
    hookInstance: str = Field(min_length=1, max_length=128)  # noqa: N815 - the spec's name
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None
    fhirServer: str | None = None  # noqa: N815
    fhirAuthorization: dict[str, Any] | None = None  # noqa: N815


class OverrideReason(BaseModel):
    model_config = ConfigDict(extra="allow")

    reason: dict[str, Any] | None = None
    userComment: str | None = Field(default=None, max_length=2000)  # noqa: N815


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    card: str = Field(min_length=1, max_length=64)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[dict[str, Any]] = Field(default_factory=list)  # noqa: N815
    overrideReason: OverrideReason | None = None  # noqa: N815
    outcomeTimestamp: str | None = None  # noqa: N815


class FeedbackRequest(BaseModel):
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)


def _parse(model: type[BaseModel], body: Any, what: str) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        details = [
            {
                "field": ".".join(str(p) for p in err.get("loc", ())) or what,
                "rule": err.get("type", "invalid"),
                "message": err.get("msg", "invalid"),
            }
            for err in exc.errors()
        ]
        message = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        raise InvalidRequestError(f"invalid {what}: {message}", details=details) from exc


class CdsHooks:
    def __init__(
        self,
        plane: ModelServer,
        store: CdsStore,
        rationales: Rationales,
        allowed_fhir_servers: list[str] | None = None,
        fetch_timeout_s: float = 5.0,
    ) -> None:
        self.plane = plane
        self.store = store
        self.rationales = rationales
        self.allowed = [s.rstrip("/") for s in allowed_fhir_servers or []]
        self.fetch_timeout_s = fetch_timeout_s

    # -- discovery --------------------------------------------------------------------------
    async def services(self) -> list[CdsService]:
        found: list[CdsService] = []
        for entry in self.plane.list_served():
            if SERVICE_ALIAS not in entry["aliases"]:
                continue
            try:
                model = await self.plane.model(entry["name"], SERVICE_ALIAS)
            except Exception:  # a model that fails to load offers no service
                continue
            try:
                found.extend(services_of(model))
            except InvalidRequestError:  # a feature map that does not fit its signature
                continue
        return found

    async def service(self, service_id: str) -> CdsService:
        for service in await self.services():
            if service.id == service_id:
                return service
        raise NotFoundError(f"no CDS service {service_id!r}; GET /cds-services lists them")

    # -- hook calls -------------------------------------------------------------------------
    async def call(
        self, service: CdsService, body: Any, context: RequestContext, base_url: str
    ) -> dict[str, Any]:
        request: HookRequest = _parse(HookRequest, body, "CDS Hooks request")
        if request.hook != service.hook:
            raise InvalidRequestError(
                f"service {service.id!r} answers hook {service.hook!r}, not {request.hook!r}",
                details=[{"field": "hook", "rule": "equals", "message": f"must be {service.hook}"}],
            )
        patient_id = request.context.get("patientId")
        if not isinstance(patient_id, str) or not patient_id:
            raise InvalidRequestError(
                "context.patientId is required",
                details=[{"field": "context.patientId", "rule": "required", "message": "missing"}],
            )
        prefetch = dict(request.prefetch or {})
        missing = sorted(k for k in service.required if prefetch.get(k) is None)
        if missing:
            prefetch.update(await self._fetch(service, request, patient_id, missing))
        model = await self.plane.model(service.model, SERVICE_ALIAS)
        fmap = fhir_map(model)
        assert fmap is not None
        bundle = _bundle_from_prefetch(prefetch)
        context = dataclasses.replace(context, patient_id=f"Patient/{patient_id}")
        try:
            patients = bundle_to_records(bundle, fmap, model.signature, as_of=datetime.now(UTC))
            patient = next((p for p in patients if p.reference == f"Patient/{patient_id}"), None)
            if patient is None:
                raise PreconditionFailedError(
                    "prefetch 'patient' does not hold the Patient named by context.patientId"
                )
            response = await self.plane.predict_records(
                model.name, str(model.number), {"instances": [patient.record]}, context
            )
        except ValidationFailedError as exc:  # missing/unconvertible data, out-of-range values
            card = self._not_scored(model, fmap, exc, base_url)
        else:
            probability = positive_probability(model, fmap, response["predictions"][0])
            reasons = await self.rationales(
                model, [patient.record], fmap.positive_class if fmap is not None else None
            )
            card = self._card(model, fmap, probability, reasons[0], base_url)
        issued = IssuedCard(
            uuid=card["uuid"],
            service_id=service.id,
            hook=service.hook,
            hook_instance=request.hookInstance,
            model_name=model.name,
            version=model.number,
            indicator=card["indicator"],
        )
        await asyncio.to_thread(self.store.record_cards, [issued])
        metrics.CDS_CARDS.labels(model.name, str(model.number), card["indicator"]).inc()
        return {"cards": [card]}

    async def _fetch(
        self, service: CdsService, request: HookRequest, patient_id: str, missing: list[str]
    ) -> dict[str, Any]:
        server = (request.fhirServer or "").rstrip("/")
        if not server or server not in self.allowed:
            metrics.CDS_PRECONDITION_FAILED.labels(service.id).inc()
            why = (
                "no fhirServer was given"
                if not server
                else "the fhirServer is not on the allowlist (MEDSERVE_CDS_FHIR_SERVERS)"
            )
            raise PreconditionFailedError(
                f"prefetch {', '.join(missing)} absent and {why}",
                details=[
                    {"field": f"prefetch.{k}", "rule": "required", "message": "absent"}
                    for k in missing
                ],
            )

        headers = {"Accept": "application/fhir+json"}
        token = (request.fhirAuthorization or {}).get("access_token")
        if isinstance(token, str) and token:
            headers["Authorization"] = f"Bearer {token}"
        fetched: dict[str, Any] = {}
        async with httpx.AsyncClient(timeout=self.fetch_timeout_s, headers=headers) as client:
            for key in missing:
                path = service.prefetch[key].replace(
                    "{{context.patientId}}", quote(patient_id, safe="")
                )
                try:
                    reply = await client.get(f"{server}/{path}")
                    reply.raise_for_status()
                    fetched[key] = reply.json()
                except (httpx.HTTPError, ValueError) as exc:
                    metrics.CDS_PRECONDITION_FAILED.labels(service.id).inc()
                    raise PreconditionFailedError(
                        f"prefetch {key} absent and the FHIR server could not provide it "
                        f"({type(exc).__name__})"
                    ) from exc
        return fetched

    def _card(
        self,
        model: LoadedModel,
        fmap: FhirMap,
        probability: float,
        rationale: str | None,
        base_url: str,
    ) -> dict[str, Any]:
        band = fmap.band(probability)
        label = (band.label or band.code) if band is not None else None
        risk = f"{label} risk " if label else ""
        summary = f"{fmap.outcome.text}: {risk}({probability:.0%})"
        if len(summary) > 139:
            summary = summary[:138] + "…"
        lines = [
            f"**{fmap.outcome.text}**: estimated probability **{probability:.1%}**"
            + (f" ({label} risk)" if label else "")
            + f", from model `{model.name}` version {model.number}.",
        ]
        if rationale:
            lines += ["", "Main contributing factors:"]
            lines += [f"- {part.strip()}" for part in rationale.split(";") if part.strip()]
        lines += [
            "",
            "Decision support only: review with the patient's full record. "
            "The model card states its intended use and limits.",
        ]
        return {
            "uuid": str(uuid.uuid4()),
            "summary": summary,
            "indicator": band.indicator if band is not None else "info",
            "detail": "\n".join(lines),
            "source": _source(model, fmap, base_url),
            "overrideReasons": OVERRIDE_REASONS,
        }

    def _not_scored(
        self, model: LoadedModel, fmap: FhirMap, exc: ValidationFailedError, base_url: str
    ) -> dict[str, Any]:
        """Data the model needs is absent or implausible: say so rather than guess."""
        lines = ["This patient could not be scored:", ""]
        if isinstance(exc, FhirInputError):
            lines += [f"- {p.message}" for p in exc.problems]
        else:
            lines += [f"- {d.get('field')}: {d.get('message')}" for d in exc.details]
        return {
            "uuid": str(uuid.uuid4()),
            "summary": f"{fmap.outcome.text}: not scored, data missing"[:139],
            "indicator": "info",
            "detail": "\n".join(lines),
            "source": _source(model, fmap, base_url),
        }

    # -- feedback ---------------------------------------------------------------------------
    def feedback(self, service: CdsService, body: Any, actor: str) -> dict[str, Any]:

        request: FeedbackRequest = _parse(FeedbackRequest, body, "CDS Hooks feedback")
        items = []
        for item in request.feedback:
            reason = (item.overrideReason.reason or {}) if item.overrideReason else {}
            comment = item.overrideReason.userComment if item.overrideReason else None
            items.append(
                Feedback(
                    card_uuid=item.card,
                    outcome=item.outcome,
                    override_code=_text(reason.get("code")),
                    override_system=_text(reason.get("system")),
                    override_display=_text(reason.get("display")),
                    user_comment=deidentify_text(comment) if comment else None,
                    accepted_suggestions=len(item.acceptedSuggestions),
                    outcome_at=parse_fhir_datetime(item.outcomeTimestamp),
                )
            )
        cards = self.store.record_feedback(service.id, items, actor)
        for stored, card in zip(items, cards, strict=True):
            metrics.CDS_FEEDBACK.labels(card.model_name, str(card.version), stored.outcome).inc()
        return {"stored": len(items)}


def _text(value: Any, limit: int = 256) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _source(model: LoadedModel, fmap: FhirMap, base_url: str) -> dict[str, Any]:
    return {
        "label": f"medserve: {model.name} v{model.number}",
        "url": f"{base_url}/v1/models/{quote(model.name)}/versions/{model.number}/card?format=html",
        "topic": {"system": "urn:medserve:model", "code": model.name, "display": fmap.outcome.text},
    }


def _bundle_from_prefetch(prefetch: dict[str, Any]) -> dict[str, Any]:
    """One collection Bundle out of the prefetch: resources as they are, searchsets unpacked."""
    entries: list[dict[str, Any]] = []
    for value in prefetch.values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            for entry in value.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if (
                    isinstance(resource, dict)
                    and resource.get("resourceType") != "OperationOutcome"
                ):
                    item = {"resource": resource}
                    if entry.get("fullUrl"):
                        item["fullUrl"] = entry["fullUrl"]
                    entries.append(item)
        elif "resourceType" in value:
            entries.append({"resource": value})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}

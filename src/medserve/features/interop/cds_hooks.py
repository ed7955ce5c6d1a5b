"""CDS Hooks 2.0 service: discovery, hook calls answered with cards, and card feedback.

A model version serves CDS hooks when its FHIR feature map names them (``hooks:
[patient-view]``); the service is whatever version the model's ``production`` alias points at,
so a promotion moves the CDS service with it. Prefetch templates come from the feature map.
A prefetch key that is ``null`` is the client saying it has no such data (the feature is then
missing, as for an empty search); a key that is absent is fetched from the client's
``fhirServer``, only if that server is on the ``MEDSERVE_CDS_FHIR_SERVERS`` allowlist and the
request carries ``fhirAuthorization`` (its access token), following ``next`` links within
:class:`FetchLimits`; otherwise medserve answers 412 as the specification asks. Nothing of the
hook request is stored: only the ids of the cards issued (for feedback) and the feedback
itself, with its free-text comment de-identified.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urljoin

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    Problem,
    bundle_to_records,
)
from medserve.features.interop.fhir_output import (
    OperatingThreshold,
    fhir_map,
    operating_threshold,
    positive_probability,
)

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
class FetchLimits:
    """How much of a FHIR server one hook call may read when prefetch is absent: pages of one
    search (``Bundle.link[next]``), bytes and seconds of the whole call. Past a limit the call
    is answered 412: scoring part of a search could miss the newest reading or skew a mean."""

    pages: int = 10
    bytes: int = 5_000_000
    seconds: float = 10.0


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
                f"Observation?patient={patient}&code="
                + ",".join(_token(f"{LOINC}|{c}") for c in codes)
                + "&_sort=-date&_count=100"
            )
        elif source.condition:
            key = f"cond-{name}"
            templates[key] = f"Condition?patient={patient}&code=" + ",".join(
                _token(c) for c in source.condition
            )
        if key is not None and needed:
            required.add(key)
    return templates, required


def _token(code: str) -> str:
    """A token search value in a URL: ``system|code`` with ``|`` percent-encoded (``%7C``), as
    a query string must carry it; ``,`` stays the separator of alternatives."""
    return quote(code, safe=":/.-_~")


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


class FhirAuthorization(BaseModel):
    """The access token the CDS client grants for its FHIR server (every field REQUIRED)."""

    model_config = ConfigDict(extra="allow")

    access_token: str = Field(min_length=1)
    token_type: str
    expires_in: int
    scope: str
    subject: str

    @field_validator("token_type")
    @classmethod
    def _bearer(cls, value: str) -> str:
        if value.lower() != "bearer":
            raise ValueError("must be 'Bearer'")
        return value


class HookRequest(BaseModel):
    """The CDS Hooks 2.0 request body (fields medserve reads; others are allowed)."""

    model_config = ConfigDict(extra="allow")

    hook: str
    hookInstance: str = Field(min_length=1, max_length=128)  # noqa: N815 - the spec's name
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None
    fhirServer: str | None = None  # noqa: N815
    fhirAuthorization: FhirAuthorization | None = None  # noqa: N815


class OverrideReason(BaseModel):
    model_config = ConfigDict(extra="allow")

    reason: dict[str, Any] | None = None
    userComment: str | None = Field(default=None, max_length=2000)  # noqa: N815


class AcceptedSuggestion(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=128)


class FeedbackItem(BaseModel):
    """One feedback item as CDS Hooks 2.0 defines it: ``outcomeTimestamp`` is required (an
    ISO 8601 date-time with its zone), and so is ``acceptedSuggestions`` for ``accepted``."""

    model_config = ConfigDict(extra="allow")

    card: str = Field(min_length=1, max_length=64)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None  # noqa: N815
    overrideReason: OverrideReason | None = None  # noqa: N815
    outcomeTimestamp: datetime  # noqa: N815

    @field_validator("outcomeTimestamp", mode="before")
    @classmethod
    def _instant(cls, value: Any) -> datetime:
        parsed = None
        if isinstance(value, str) and "T" in value:
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise ValueError("must be an ISO 8601 date-time with a zone, e.g. 2026-11-30T10:00:00Z")
        return parsed.astimezone(UTC)

    @model_validator(mode="after")
    def _accepted_names_suggestions(self) -> FeedbackItem:
        if self.outcome == "accepted" and self.acceptedSuggestions is None:
            raise ValueError("acceptedSuggestions is required for an 'accepted' outcome")
        return self


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
        limits: FetchLimits | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.plane = plane
        self.store = store
        self.rationales = rationales
        self.allowed = [s.rstrip("/") for s in allowed_fhir_servers or []]
        self.fetch_timeout_s = fetch_timeout_s
        self.limits = limits or FetchLimits()
        self.transport = transport  # tests: an httpx transport in place of the network

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
        self, service: CdsService, body: Any, context: RequestContext, base_url: str | None
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
        # an absent key was not prefetched (fetch it or 412); a null one is "no such data"
        prefetch: dict[str, Any] = dict(request.prefetch or {})
        missing = sorted(k for k in service.required if k not in prefetch)
        if missing:
            prefetch.update(await self._fetch(service, request, patient_id, missing))
        # a canary split keeps a patient on one version (the hash of the patient, not kept)
        sticky = dataclasses.replace(context, patient_id=f"Patient/{patient_id}")
        model = await self.plane.model(service.model, SERVICE_ALIAS, sticky)
        fmap = fhir_map(model)
        assert fmap is not None
        bundle = bundle_from_prefetch(prefetch, request.fhirServer)
        context = dataclasses.replace(context, patient_id=f"Patient/{patient_id}")
        try:
            if "patient" in prefetch and prefetch["patient"] is None:
                raise FhirInputError(
                    [
                        Problem(
                            "required",
                            "the CDS client has no Patient for context.patientId "
                            "(prefetch 'patient' is null)",
                            "prefetch.patient",
                        )
                    ]
                )
            patients = bundle_to_records(bundle, fmap, model.signature, as_of=datetime.now(UTC))
            wanted = f"Patient/{patient_id}"
            patient = next((p for p in patients if p.logical == wanted), None)
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
            threshold = operating_threshold(model, fmap)
            card = self._card(model, fmap, probability, reasons[0], base_url, threshold)
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
        details = [
            {"field": f"prefetch.{k}", "rule": "required", "message": "absent"} for k in missing
        ]
        absent = f"prefetch {', '.join(missing)} absent"
        if not server or server not in self.allowed:
            why = (
                "no fhirServer was given"
                if not server
                else "the fhirServer is not on the allowlist (MEDSERVE_CDS_FHIR_SERVERS)"
            )
            raise _precondition(service, f"{absent} and {why}", details)
        if request.fhirAuthorization is None:
            raise _precondition(
                service,
                f"{absent} and no fhirAuthorization was given: medserve reads a FHIR server "
                "only with the access token the CDS client grants for it",
                details,
            )
        headers = {
            "Accept": "application/fhir+json",
            "Authorization": f"Bearer {request.fhirAuthorization.access_token}",
        }
        fetched: dict[str, Any] = {}
        read = _Reader(self, service, server)
        try:
            async with (
                asyncio.timeout(self.limits.seconds),
                httpx.AsyncClient(
                    timeout=self.fetch_timeout_s,
                    headers=headers,
                    transport=self.transport,
                    follow_redirects=False,
                ) as client,
            ):
                for key in missing:
                    path = service.prefetch[key].replace(
                        "{{context.patientId}}", quote(patient_id, safe="")
                    )
                    fetched[key] = await read.search(client, key, f"{server}/{path}")
        except TimeoutError as exc:
            raise _precondition(
                service,
                f"{absent} and the FHIR server did not provide it within {self.limits.seconds:g} s",
            ) from exc
        return fetched

    def _card(
        self,
        model: LoadedModel,
        fmap: FhirMap,
        probability: float,
        rationale: str | None,
        base_url: str | None,
        threshold: OperatingThreshold | None = None,
    ) -> dict[str, Any]:
        band = fmap.band(probability)
        label = (band.label or band.code) if band is not None else None
        risk = f"{label} risk " if label else ""
        figures = f"{probability:.0%}"
        if threshold is not None:
            side = "at/above" if probability >= threshold.value else "below"
            figures += f", {side} the {_pct(threshold.value)} threshold"
        suffix = f": {risk}({figures})"
        room = 139 - len(suffix)
        outcome = fmap.outcome.text
        if len(outcome) > room:
            outcome = outcome[: max(room - 1, 0)] + "…"
        summary = (outcome + suffix)[:139]
        lines = [
            f"**{fmap.outcome.text}**: estimated probability **{probability:.1%}**"
            + (f" ({label} risk)" if label else "")
            + f", from model `{model.name}` version {model.number}.",
        ]
        if threshold is not None:
            lines += [
                "",
                f"The model's label is positive ({threshold.positive_class}) at risk >= "
                f"{threshold.value:g} ({_pct(threshold.value)}), the operating threshold of "
                f"version {model.number}: this risk is {threshold.verdict(probability)}.",
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
        self, model: LoadedModel, fmap: FhirMap, exc: ValidationFailedError, base_url: str | None
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
        unknown = [
            {
                "field": f"feedback.{i}.acceptedSuggestions.{j}.id",
                "rule": "suggestion_of_card",
                "message": "medserve's cards carry no suggestions: nothing can be accepted",
            }
            for i, item in enumerate(request.feedback)
            for j, _ in enumerate(item.acceptedSuggestions or [])
        ]
        if unknown:
            raise InvalidRequestError(
                "invalid CDS Hooks feedback: acceptedSuggestions names suggestions the card "
                "does not have (" + ", ".join(d["field"] for d in unknown) + ")",
                details=unknown,
            )
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
                    accepted_suggestions=len(item.acceptedSuggestions or []),
                    outcome_at=item.outcomeTimestamp,
                )
            )
        cards = self.store.record_feedback(service.id, items, actor)
        for stored, card in zip(items, cards, strict=True):
            metrics.CDS_FEEDBACK.labels(card.model_name, str(card.version), stored.outcome).inc()
        return {"stored": len(items)}


def _text(value: Any, limit: int = 256) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _pct(value: float) -> str:
    return f"{value * 100:.4g}%"


def _precondition(
    service: CdsService, message: str, details: list[dict[str, Any]] | None = None
) -> PreconditionFailedError:
    metrics.CDS_PRECONDITION_FAILED.labels(service.id).inc()
    return PreconditionFailedError(message, details=details or [])


class _Reader:
    """Reads prefetch from the client's FHIR server within the call's :class:`FetchLimits`:
    a search's ``next`` pages are followed on the same server only (a link elsewhere is a
    request forgery vector), and every byte read counts against the call's budget."""

    def __init__(self, hooks: CdsHooks, service: CdsService, server: str) -> None:
        self.limits = hooks.limits
        self.service = service
        self.server = server
        self.read = 0

    async def search(self, client: httpx.AsyncClient, key: str, url: str) -> Any:
        first = await self._get(client, key, url)
        if first.get("resourceType") != "Bundle":
            return first
        entries = list(first.get("entry") or [])
        page, current = first, url
        for pages in range(1, self.limits.pages + 1):
            following = _next_link(page)
            if following is None:
                first["entry"] = entries
                first.pop("link", None)
                return first
            if pages == self.limits.pages:
                break
            current = urljoin(current, following)
            if not _on_server(current, self.server):
                raise _precondition(
                    self.service,
                    f"prefetch {key}: the FHIR server's next link leaves that server; "
                    "medserve follows links on the fhirServer only",
                )
            page = await self._get(client, key, current)
            entries.extend(page.get("entry") or [])
        raise _precondition(
            self.service,
            f"prefetch {key}: the search has more than {self.limits.pages} pages "
            "(the most medserve reads for one prefetch key)",
        )

    async def _get(self, client: httpx.AsyncClient, key: str, url: str) -> dict[str, Any]:
        chunks: list[bytes] = []
        try:
            async with client.stream("GET", url) as reply:
                reply.raise_for_status()
                async for chunk in reply.aiter_bytes():
                    self.read += len(chunk)
                    if self.read > self.limits.bytes:
                        raise _precondition(
                            self.service,
                            f"prefetch {key}: the FHIR server's answers exceed "
                            f"{self.limits.bytes} bytes (the most medserve reads for one call)",
                        )
                    chunks.append(chunk)
            body = orjson.loads(b"".join(chunks))
        except (httpx.HTTPError, ValueError) as exc:
            raise _precondition(
                self.service,
                f"prefetch {key} absent and the FHIR server could not provide it "
                f"({type(exc).__name__})",
            ) from exc
        if not isinstance(body, dict):
            raise _precondition(
                self.service, f"prefetch {key}: the FHIR server answered with no resource"
            )
        return body


def _next_link(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


def _on_server(url: str, server: str) -> bool:
    return url == server or url.startswith((f"{server}/", f"{server}?"))


def _source(model: LoadedModel, fmap: FhirMap, base_url: str | None) -> dict[str, Any]:
    """The card's source. Its ``url`` must be absolute (CDS Hooks 2.0), so it is given only
    where ``MEDSERVE_PUBLIC_URL`` says where medserve is: a URL built from the request's
    ``Host`` header would let any caller put its own host into the card."""
    source: dict[str, Any] = {
        "label": f"medserve: {model.name} v{model.number}",
        "topic": {"system": "urn:medserve:model", "code": model.name, "display": fmap.outcome.text},
    }
    if base_url:
        source["url"] = (
            f"{base_url}/v1/models/{quote(model.name)}/versions/{model.number}/card?format=html"
        )
    return source


def bundle_from_prefetch(prefetch: dict[str, Any], server: str | None = None) -> dict[str, Any]:
    """One collection Bundle out of the prefetch: resources as they are, searchsets unpacked,
    null keys skipped, and each resource once although several keys may return it (a blood
    pressure panel answers both the systolic and the diastolic search).

    Everything in a hook call comes from the client's one FHIR server, so each resource is
    named ``<fhirServer>/<Type>/<id>`` (or by ``Type/id`` where no server is named): the
    prefetch's relative references then resolve by the Bundle rules, whatever fullUrls the
    searchsets carried."""
    base = server.rstrip("/") if server else None
    entries: list[dict[str, Any]] = []
    seen: set[Any] = set()

    def add(resource: Any, full_url: Any) -> None:
        if not isinstance(resource, dict) or "resourceType" not in resource:
            return
        kind = resource.get("resourceType")
        if kind == "OperationOutcome":
            return
        if resource.get("id"):
            key: Any = (kind, resource["id"])
            item: dict[str, Any] = {"resource": resource}
            if base:
                item["fullUrl"] = f"{base}/{kind}/{resource['id']}"
        else:
            key = full_url or orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
            item = {"resource": resource, **({"fullUrl": full_url} if full_url else {})}
        if key in seen:
            return
        seen.add(key)
        entries.append(item)

    for value in prefetch.values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            for entry in value.get("entry") or []:
                if isinstance(entry, dict):
                    add(entry.get("resource"), entry.get("fullUrl"))
        else:
            add(value, None)
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}

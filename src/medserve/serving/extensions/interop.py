"""HTTP extension: interop (see serving/extensions/__init__.py for the contract).

FHIR on the records endpoint (a media handler: ``application/fhir+json`` in, RiskAssessment out
on ``Accept: application/fhir+json`` or ``?format=fhir``) and the CDS Hooks 2.0 service:
``GET /cds-services``, ``POST /cds-services/{id}``, ``POST /cds-services/{id}/feedback``, plus
``GET /v1/models/{name}/cds-feedback`` (accepted/overridden counts per version) for monitoring.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import APIRouter, Body, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from medserve.core.context import (
    Principal,
    RequestContext,
    made_request_id,
)
from medserve.core.settings import Settings
from medserve.core.store.feedback import CdsStore
from medserve.features.interop.cds_hooks import CdsHooks, CdsService
from medserve.serving.extension import ServingExtension
from medserve.serving.extensions.interop_http import media_handlers, rationales
from medserve.serving.extensions.security import ACTION_SCOPE_KEY, visible
from medserve.serving.media import MediaHandler
from medserve.serving.resources import ResourceKey, Resources, principal_of, resources_of

router = APIRouter(tags=["cds-hooks"])

HOOK_EXAMPLE = {
    "hook": "patient-view",
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "context": {"userId": "Practitioner/example", "patientId": "1288992"},
    "prefetch": {"patient": {"resourceType": "Patient", "id": "1288992", "gender": "male"}},
}
FEEDBACK_EXAMPLE = {
    "feedback": [
        {
            "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
            "outcome": "overridden",
            "overrideReason": {
                "reason": {
                    "code": "not-relevant",
                    "system": "urn:medserve:cds-override-reason",
                    "display": "Not relevant for this patient",
                },
                "userComment": "Recent labs pending",
            },
            "outcomeTimestamp": "2026-11-30T10:00:00Z",
        }
    ]
}


CDS_HOOKS: ResourceKey[CdsHooks] = ResourceKey("CDS Hooks services")


def _cds(request: Request) -> CdsHooks:
    return resources_of(request).get(CDS_HOOKS)


def _authorize(request: Request, service: CdsService, action: str) -> Principal:
    """Per-model authorization (the path names a service, not a model) and the audit entry's
    model and version."""
    principal = principal_of(request)
    resources_of(request).guard.authorize(principal, "predict", service.model)
    template = request.scope.get(ACTION_SCOPE_KEY, (None, None, None, request.url.path))[3]
    request.scope[ACTION_SCOPE_KEY] = (action, service.model, str(service.version), template)
    return principal


def _base_url(request: Request) -> str | None:
    """Where medserve is, for absolute links in cards: ``MEDSERVE_PUBLIC_URL`` only. Never the
    request's ``Host`` header, which any caller sets (links would point at its host)."""
    configured = resources_of(request).settings.public_url
    return str(configured).rstrip("/") if configured else None


@router.get("/cds-services")
async def discovery(request: Request) -> dict[str, Any]:
    """CDS Hooks discovery: a service per served model whose FHIR map declares hooks."""
    services = await _cds(request).services()
    return {"services": [s.discovery() for s in services if visible(request, s.model)]}


@router.post("/cds-services/{service_id}")
async def call_service(
    request: Request, service_id: str, body: Any = Body(examples=[HOOK_EXAMPLE])
) -> dict[str, Any]:
    """A hook call: cards from the model's production version (412 when data is absent)."""
    cds = _cds(request)
    service = await cds.service(service_id)
    principal = _authorize(request, service, "predict")
    client = request.client
    request_id, made = request.headers.get("x-request-id", "")[:64], None
    if not request_id:
        request_id, made = made_request_id()
    context = RequestContext(
        request_id=request_id,
        protocol="cds-hooks",
        principal=principal,
        client=client.host if client else None,
        site=request.headers.get("x-site"),
        id_time_us=made,
    )
    return await cds.call(service, body, context, _base_url(request))


@router.post("/cds-services/{service_id}/feedback")
async def feedback(
    request: Request, service_id: str, body: Any = Body(examples=[FEEDBACK_EXAMPLE])
) -> dict[str, Any]:
    """What the clinician did with the cards (accepted / overridden, with a reason)."""
    cds = _cds(request)
    service = await cds.service(service_id)
    principal = _authorize(request, service, "cds_feedback")
    return await asyncio.to_thread(cds.feedback, service, body, principal.subject)


@router.get(
    "/v1/models/{name}/cds-feedback",
    tags=["monitoring"],
    openapi_extra={"x-medserve-action": "read_monitoring"},
)
async def feedback_summary(request: Request, name: str) -> dict[str, Any]:
    """CDS cards issued and the feedback on them, per version (acceptance, override reasons)."""
    return await asyncio.to_thread(_cds(request).store.feedback_summary, name)


@asynccontextmanager
async def lifespan(resources: Resources) -> AsyncIterator[None]:
    cds = CdsHooks(
        resources.plane,
        CdsStore(resources.registry.store),
        functools.partial(rationales, resources.plane),
        resources.settings.cds_fhir_servers,
    )
    resources.provide(CDS_HOOKS, cds)
    yield


class CdsCors:
    """CORS for ``/cds-services`` only (the CDS Hooks specification asks services to allow
    browser-based CDS clients; the rest of the API is not for browsers): Starlette's
    ``CORSMiddleware`` answers preflights before authentication, since a browser sends them
    without credentials, and adds the allow-origin header to answers. ``*`` is safe here because
    credentials travel in the Authorization header, never in cookies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=["*"],
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/cds-services"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class InteropExtension(ServingExtension):
    """FHIR in and out on the records API, CDS Hooks services with their CORS."""

    name = "interop"
    order = 40
    router = router

    def lifespan(self, resources: Resources) -> AbstractAsyncContextManager[None]:
        return lifespan(resources)

    def wrap(self, app: ASGIApp, resources: Resources) -> ASGIApp:
        return CdsCors(app)

    def media_handlers(self, settings: Settings) -> Mapping[tuple[str, bytes], MediaHandler]:
        return media_handlers()


extension = InteropExtension()

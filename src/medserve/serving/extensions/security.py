"""HTTP extension: security — the guard, the audit trail, security headers, ``GET /v1/audit``.

Three pieces work together:

- ``SecurityMiddleware`` wraps the whole ASGI app (fast path included). It adds security headers
  to every response, authenticates every request to the FastAPI routes (the fast path calls the
  guard itself), and audits every access: changes are written durably before the response
  starts, reads and failed predictions are queued for the background writer.
- ``authorize_route`` is a FastAPI dependency on every route: it maps the route to an action
  group (``x-medserve-action`` in a route's ``openapi_extra`` wins over the path rules) and asks
  the guard.
- ``AuditObserver`` is a ``PredictionObserver`` that queues one audit entry per prediction.

A request refused because its caller could not be authenticated (401) is not audited one entry
each: both refusal paths count it in ``AuthFailures`` (``serving/auth_failures.py``), which writes
one ``auth_failed`` entry per source, minute, coarse path and reason. A 403 (authenticated, not
allowed) and every other refusal keep one entry each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from medserve.core.audit import AuditEntry, AuditLog, load_audit_keys
from medserve.core.context import PRINCIPAL_SCOPE_KEY, Principal, stored_request_id
from medserve.core.errors import (
    AuthenticationError,
    InvalidRequestError,
    MedserveError,
    PermissionDeniedError,
    RateLimitedError,
)
from medserve.core.events import PredictionEvent, RefusalEvent
from medserve.core.journal import Journal, journal_dir
from medserve.core.monitoring_config import MonitoringSettings
from medserve.core.phi import deidentify_text, load_or_create_salt, pseudonymize
from medserve.core.settings import Settings
from medserve.core.store.counters import SharedCounters
from medserve.core.store.unit_of_work import engine_of
from medserve.features.security.guard import SecurityGuard
from medserve.features.security.keys import ApiKey, ChangeCounter, SecurityStore
from medserve.features.security.oidc import JwksSource, JwtVerifier
from medserve.features.security.permissions import ROLES
from medserve.features.security.ratelimit import SharedRateLimiter
from medserve.serving.auth_failures import AuthFailures, auth_failure_reason, coarse_path
from medserve.serving.extension import ServingExtension
from medserve.serving.fast_path import hot_path_of, stored_names
from medserve.serving.http_errors import status_for
from medserve.serving.params import IsoDateTime
from medserve.serving.resources import ResourceKey, Resources, resources_of

log = logging.getLogger(__name__)

# What this extension provides to the others (absent while security is off).
AUDIT_LOG: ResourceKey[AuditLog] = ResourceKey("audit log")
PHI_SALT: ResourceKey[bytes] = ResourceKey("PHI salt")
AUTH_FAILURES: ResourceKey[AuthFailures] = ResourceKey("failed-authentication counts")

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
ACTION_SCOPE_KEY = "medserve.action"
# Set by a handler whose change wrote its own audit entry in the change's transaction: the
# middleware then adds none for a successful answer (one entry per change, committed with it).
AUDITED_SCOPE_KEY = "medserve.audited"
SQL_INT_MAX = 2**63 - 1  # the largest integer a SQL BIGINT (and SQLite) holds
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
# The docs page loads its scripts from a CDN: a strict policy everywhere else.
_CSP_API = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")

router = APIRouter()


# --------------------------------------------------------------------------------------------
# Route -> action group
# --------------------------------------------------------------------------------------------


def route_action(method: str, path: str, params: dict[str, Any], extra: dict[str, Any]) -> str:
    explicit = extra.get("x-medserve-action")
    if isinstance(explicit, str):
        return explicit
    if path.startswith("/v1/audit"):
        return "read_audit"
    if path.startswith(("/v1/security", "/v1/keys", "/v1/tenants")):
        return "admin"
    if path.startswith("/v1/alerts") and method not in _READ_METHODS:
        return "write"  # acknowledging an alert changes its state (as monitoring checks too)
    if path == "/metrics":
        return "read_metrics"
    if path.startswith(("/v1/monitoring", "/v1/drift", "/v1/alerts")) or path.endswith(
        "/monitoring"
    ):
        return "read_monitoring"
    if path.startswith("/v1/outcomes"):
        return "read_monitoring" if method in _READ_METHODS else "predict"
    if path.startswith("/v2") or path.endswith(("/predict", "/infer", "/explain")):
        return "predict"
    if path.startswith(("/fhir", "/v1/fhir", "/cds-services")):
        return "predict"
    if method in _READ_METHODS:
        return "read_models"
    if "alias" in path and params.get("alias") == "production":
        return "approve"
    return "write"


def _model_of(params: dict[str, Any]) -> str | None:
    for key in ("name", "model", "model_name"):
        value = params.get(key)
        if isinstance(value, str):
            return value
    return None


async def authorize_route(request: Request) -> None:
    """FastAPI dependency on every route: the guard decides, per action group and model."""
    scope = request.scope
    route = scope.get("route")
    path = route.path if isinstance(route, APIRoute) else scope["path"]
    if path in OPEN_PATHS:
        return
    extra = (route.openapi_extra or {}) if isinstance(route, APIRoute) else {}
    params = dict(request.path_params)
    action = route_action(request.method, path, params, extra)
    model = _model_of(params)
    version = params.get("version")
    scope[ACTION_SCOPE_KEY] = (action, model, version, path)
    principal = scope.get(PRINCIPAL_SCOPE_KEY)
    if principal is None:  # security off: the open guard lets everyone through
        return
    resources_of(request).guard.authorize(principal, action, model)


def bounded(request: Request) -> bool:
    """Whether the caller is limited to some models (a tenant's key, or a key naming models)."""
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    return isinstance(principal, Principal) and (
        principal.tenant is not None or principal.models is not None
    )


def visible(request: Request, model: str) -> bool:
    """For listing routes: whether ``model`` may appear to the caller (tenants, grants)."""
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    guard = resources_of(request).guard
    if principal is None or not isinstance(guard, SecurityGuard):
        return True
    return guard.visible(principal, model)


# --------------------------------------------------------------------------------------------
# Middleware
# --------------------------------------------------------------------------------------------


def _headers_with_security(headers: list[tuple[bytes, bytes]], tls: bool, docs: bool) -> None:
    headers.extend(SECURITY_HEADERS)
    if not docs:
        headers.append(_CSP_API)
    if tls:
        headers.append(_HSTS)


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, resources: Resources) -> None:
        self.app = app
        self.resources = resources

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        tls = scope.get("scheme") == "https"
        docs = path.startswith(("/docs", "/redoc"))
        audit = self.resources.find(AUDIT_LOG)
        if audit is None or path in OPEN_PATHS:

            async def send_plain(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
                    if tls:
                        message["headers"].append(_HSTS)
                await send(message)

            await self.app(scope, receive, send_plain)
            return

        hot = hot_path_of(scope)  # the fast path authenticates, authorizes and audits those
        if hot is None:
            try:
                await self.resources.guard.authenticate(scope)
            except MedserveError as exc:
                await self._refuse(scope, send, exc, tls)
                return

        unrecorded: list[MedserveError] = []  # fail closed: answered 503 instead

        async def send_audited(message: MutableMapping[str, Any]) -> None:
            if unrecorded:  # the app's own answer is replaced: drop what it still sends
                return
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                _headers_with_security(headers, tls, docs)
                message["headers"] = headers
                status = int(message["status"])
                if status == 401:
                    headers.append((b"www-authenticate", b'Bearer realm="medserve"'))
                if hot is None:
                    action, model, version, template = scope.get(
                        ACTION_SCOPE_KEY, ("access", None, None, None)
                    )
                    if status >= 400 and model is not None:  # a name may be the caller's text
                        model, version = stored_names(self.resources.plane.manager, model, version)
                    # no route matched: the path is anyone's text, kept to medserve's words
                    where = template or coarse_path(path)
                    entry = self._entry(scope, status, action, model, version, where)
                    if status < 400 and scope.get(AUDITED_SCOPE_KEY):
                        pass  # audited in the change's own transaction
                    elif scope["method"] in _READ_METHODS:
                        try:
                            audit.enqueue(entry)
                        except MedserveError as exc:  # the trail cannot take it: not answered
                            unrecorded.append(exc)
                            await self._answer(send, exc, tls)
                            return
                    else:  # a change: durable before the caller hears about it
                        await asyncio.to_thread(audit.append, [entry])
            await send(message)

        await self.app(scope, receive, send_audited)

    def _entry(
        self,
        scope: Scope,
        status: int,
        action: str,
        model: str | None,
        version: str | None,
        path: str,
    ) -> AuditEntry:
        principal: Principal | None = scope.get(PRINCIPAL_SCOPE_KEY)
        client = scope.get("client")
        request_id = patient = None
        for key, value in scope["headers"]:
            if key == b"x-request-id" and value:
                request_id = stored_request_id(
                    value[:64].decode("latin-1"), None, self.resources.get(PHI_SALT)
                )
            elif key == b"x-patient-id" and value:
                patient = pseudonymize(value.decode("latin-1"), salt=self.resources.get(PHI_SALT))
        return AuditEntry(
            actor=principal.subject if principal else "unauthenticated",
            key_id=principal.key_id if principal else None,
            action=action,
            model=model,
            version=version,
            client=client[0] if client else None,
            outcome=status,
            request_id=request_id,
            patient_hash=patient,
            detail=f"{scope['method']} {deidentify_text(path)}",
        )

    async def _refuse(self, scope: Scope, send: Send, exc: MedserveError, tls: bool) -> None:
        status = status_for(exc)
        headers = [(b"content-type", b"application/json")]
        if isinstance(exc, AuthenticationError):
            headers.append((b"www-authenticate", b'Bearer realm="medserve"'))
        if isinstance(exc, RateLimitedError):
            headers.append((b"retry-after", str(max(1, round(exc.retry_after_s + 0.5))).encode()))
        _headers_with_security(headers, tls, False)
        # refused before the caller is known: the path is kept to medserve's own route words
        # (what follows may name a model, i.e. any text, identifiers included)
        coarse = coarse_path(scope["path"])
        if isinstance(exc, AuthenticationError):  # counted, audited per source and minute
            client = scope.get("client")
            reason = auth_failure_reason(scope["headers"])
            self.resources.get(AUTH_FAILURES).count(client[0] if client else None, coarse, reason)
            await self._send_error(send, status, headers, exc)
            return
        try:
            self.resources.get(AUDIT_LOG).enqueue(
                self._entry(scope, status, "access", None, None, coarse)
            )
        except MedserveError as unrecorded:  # fail closed: the trail cannot take it
            await self._answer(send, unrecorded, tls)
            return
        await self._send_error(send, status, headers, exc)

    async def _answer(self, send: Send, exc: MedserveError, tls: bool) -> None:
        """An error answer with the security headers (a 503 when the trail cannot record)."""
        headers = [(b"content-type", b"application/json")]
        _headers_with_security(headers, tls, False)
        await self._send_error(send, status_for(exc), headers, exc)

    @staticmethod
    async def _send_error(
        send: Send, status: int, headers: list[tuple[bytes, bytes]], exc: MedserveError
    ) -> None:
        body = orjson.dumps(exc.to_dict())
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------------
# Prediction observer
# --------------------------------------------------------------------------------------------


class AuditObserver:
    """Queues one audit entry per prediction request: with the journal on (the default) the
    entry is made and journaled before the answer; without it, later between requests. The
    patient is kept as a pseudonym (the writer makes it a per-patient reference). With
    ``failures``, a request refused before its caller was known is counted there instead."""

    def __init__(self, audit: AuditLog, salt: bytes, failures: AuthFailures | None = None) -> None:
        self.audit = audit
        self.salt = salt
        self.failures = failures

    def on_prediction(self, event: PredictionEvent) -> None:
        self.audit.enqueue_packed(self.record, event)

    def on_refusal(self, event: RefusalEvent) -> None:
        principal = event.principal
        if self.failures is not None and principal is None and event.status == 401:
            # counted: audited per source and minute (auth_failures)
            self.failures.count(event.client, event.path, event.code)
            return
        patient = event.patient_id
        self.audit.enqueue(
            AuditEntry(
                actor=principal.subject if principal else "unauthenticated",
                key_id=principal.key_id if principal else None,
                action="predict",
                model=event.model,
                version=event.ref,
                client=event.client,
                outcome=event.status,
                request_id=stored_request_id(event.request_id, event.id_time_us, self.salt),
                patient_hash=pseudonymize(patient, salt=self.salt) if patient else None,
                detail=f"{event.method} {deidentify_text(event.path)}",
            )
        )

    def record(self, event: PredictionEvent, at: str) -> list[Any]:
        """The packed entry: ``at`` and the audit fields, in ``audit._FIELDS`` order."""
        ctx = event.context
        principal = ctx.principal
        patient = pseudonymize(ctx.patient_id, salt=self.salt) if ctx.patient_id else None
        return [
            at,
            principal.subject,
            principal.key_id,
            "predict",
            event.model,
            str(event.version),
            ctx.client,
            200,
            stored_request_id(ctx.request_id, ctx.id_time_us, self.salt),
            patient,
            f"{ctx.protocol} rows={event.inputs.shape[0]}",
        ]


# --------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------


@router.get("/v1/audit", tags=["security"])
async def read_audit(
    request: Request,
    since: IsoDateTime | None = Query(default=None, description="ISO 8601 (inclusive)."),
    until: IsoDateTime | None = Query(default=None, description="ISO 8601 (exclusive)."),
    after_seq: int = Query(
        default=0, ge=0, le=SQL_INT_MAX, description="Entries after this sequence number."
    ),
    actor: str | None = None,
    model: str | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    """The audit trail, oldest first (auditors and admins)."""
    audit = resources_of(request).find(AUDIT_LOG)
    if audit is None:
        return {"entries": [], "next_after_seq": None}
    entries = await asyncio.to_thread(
        lambda: list(
            audit.entries(
                since=since,
                until=until,
                after_seq=after_seq,
                actor=actor,
                model=model,
                limit=limit,
            )
        )
    )
    nxt = entries[-1]["seq"] if len(entries) >= limit else None  # packed rows come whole
    if bounded(request):  # a tenant's (or a model-limited) key sees its own models' entries only
        entries = [e for e in entries if e["model"] and visible(request, str(e["model"]))]
    return {"entries": entries, "next_after_seq": nxt}


class KeyRequest(BaseModel):
    name: str = Field(min_length=1, max_length=256)
    roles: list[str] = Field(min_length=1, json_schema_extra={"items": {"enum": list(ROLES)}})
    models: list[str] | None = None
    tenant: str | None = None
    expires_in_days: float | None = Field(default=None, gt=0, le=36_500)
    rate_limit: int | None = Field(default=None, gt=0, le=1_000_000)


class TenantRequest(BaseModel):
    tenant: str | None = Field(default=None, max_length=128)


def _store(request: Request) -> SecurityStore:
    guard = resources_of(request).guard
    if not isinstance(guard, SecurityGuard):
        raise InvalidRequestError("security is off on this server")
    return guard.store


def _key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "roles": list(key.roles),
        "models": list(key.models) if key.models is not None else None,
        "tenant": key.tenant,
        "rate_limit": key.rate_limit,
        "created_at": key.created_at.isoformat(),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "state": key.state(),
    }


@router.get("/v1/security/keys", tags=["security"])
async def list_keys(request: Request) -> dict[str, Any]:
    """API keys (never their secrets)."""
    principal: Principal | None = request.scope.get(PRINCIPAL_SCOPE_KEY)
    tenant = principal.tenant if principal else None
    keys = await asyncio.to_thread(_store(request).list_keys)
    return {"keys": [_key_view(k) for k in keys if tenant is None or k.tenant == tenant]}


def _same_tenant(request: Request, tenant: str | None) -> None:
    """A tenant's admin manages only that tenant's keys (no escalation to operator keys)."""
    principal: Principal | None = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if principal is not None and principal.tenant is not None and tenant != principal.tenant:
        raise PermissionDeniedError("a tenant administrator manages only its own tenant's keys")


@router.post("/v1/security/keys", tags=["security"], status_code=201)
async def create_key(request: Request, body: KeyRequest) -> dict[str, Any]:
    """Create a key; the response is the only time its token is shown."""
    principal: Principal | None = request.scope.get(PRINCIPAL_SCOPE_KEY)
    _same_tenant(request, body.tenant)
    issued = await asyncio.to_thread(
        lambda: _store(request).create_key(
            body.name,
            body.roles,
            models=body.models,
            tenant=body.tenant,
            expires_in=timedelta(days=body.expires_in_days) if body.expires_in_days else None,
            rate_limit=body.rate_limit,
            created_by=principal.subject if principal else "unknown",
        )
    )
    return {**_key_view(issued.key), "token": issued.token}


@router.delete("/v1/security/keys/{key_id}", tags=["security"])
async def revoke_key(request: Request, key_id: str) -> dict[str, Any]:
    """Revoke a key: refused from the next request on, in every worker."""
    store = _store(request)
    current = {k.key_id: k for k in await asyncio.to_thread(store.list_keys)}
    target = current.get(key_id)
    _same_tenant(request, target.tenant if target else None)
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    actor = principal.subject if principal else "unknown"
    key = await asyncio.to_thread(lambda: store.revoke_key(key_id, actor=actor))
    return _key_view(key)


@router.put("/v1/security/tenants/{name}", tags=["security"])
async def assign_tenant(request: Request, name: str, body: TenantRequest) -> dict[str, Any]:
    """Assign a model to a tenant (null clears it). A tenant's admin may only claim for its own
    tenant a model it already sees: it can neither give a model away nor take another's."""
    principal: Principal | None = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if (
        principal is not None
        and principal.tenant is not None
        and (body.tenant != principal.tenant or not visible(request, name))
    ):
        raise PermissionDeniedError(
            "a tenant administrator assigns only its own tenant's models, to its tenant"
        )
    actor = principal.subject if principal else "unknown"
    store = _store(request)
    await asyncio.to_thread(lambda: store.set_model_tenant(name, body.tenant, actor=actor))
    return {"model": name, "tenant": body.tenant}


# --------------------------------------------------------------------------------------------
# Start-up wiring
# --------------------------------------------------------------------------------------------


def build_guard(settings: Settings, store: SecurityStore) -> SecurityGuard:
    verifier = None
    if settings.oidc_issuer and settings.oidc_audience and settings.oidc_jwks:
        verifier = JwtVerifier(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks=JwksSource(settings.oidc_jwks),
            leeway_s=settings.oidc_leeway_s,
            algorithms=settings.oidc_algorithms,
            roles_claim=settings.oidc_roles_claim,
            tenant_claim=settings.oidc_tenant_claim,
        )
    guard = SecurityGuard(
        store,
        ChangeCounter(store, settings.security_poll_s),
        jwt_verifier=verifier,
        cache_ttl_s=settings.auth_cache_ttl_s,
        default_rate_limit=settings.rate_limit_per_key,
        workers=settings.workers,
    )
    if settings.shared_rate_limits:  # replicas share one count (docs/scale-out.md)
        if store.engine.dialect.name == "postgresql":
            guard.shared_limiter = SharedRateLimiter(SharedCounters(store.engine), guard.limiter)
        else:  # one machine: its processes split each limit, as without the setting
            log.warning("shared rate limits need PostgreSQL: each process enforces its share")
    return guard


@asynccontextmanager
async def lifespan(resources: Resources) -> AsyncIterator[None]:
    settings = resources.settings
    if not settings.security:
        log.warning("security is OFF: no authentication, no audit trail (demo mode only)")
        yield
        return
    engine = engine_of(resources.registry.store)
    store = SecurityStore(engine)
    guard = build_guard(settings, store)
    fail_open = MonitoringSettings().audit_failure == "fail_open"
    journal = (
        Journal(journal_dir(settings.home), "audit", fsync_ms=settings.journal_fsync_ms)
        if settings.journal
        else None
    )
    audit = AuditLog(
        engine,
        queue_size=settings.audit_queue_size,
        keys=load_audit_keys(settings.home),
        journal=journal,
        fail_open=fail_open,
    )
    await asyncio.to_thread(audit.seal)  # a trail from before keys, or a new key: marked
    salt = load_or_create_salt(settings.home)
    resources.guard = guard
    resources.provide(PHI_SALT, salt)
    resources.provide(AUDIT_LOG, audit)
    failures = AuthFailures(audit)
    resources.provide(AUTH_FAILURES, failures)
    resources.plane.observers.append(AuditObserver(audit, salt, failures))
    if not fail_open:  # the default
        resources.plane.required.append(lambda: audit.failure)
    audit.start()
    audit.drive(asyncio.get_running_loop())
    failures.drive(asyncio.get_running_loop())
    try:
        yield
    finally:
        failures.close()  # the open minutes' counts, queued before the trail drains
        audit.close()
        guard.close()


class SecurityExtension(ServingExtension):
    """Authentication, authorization, rate limits, the audit trail and security headers."""

    name = "security"
    order = 10
    router = router

    def lifespan(self, resources: Resources) -> AbstractAsyncContextManager[None]:
        return lifespan(resources)

    def wrap(self, app: ASGIApp, resources: Resources) -> ASGIApp:
        return SecurityMiddleware(app, resources)


extension = SecurityExtension()

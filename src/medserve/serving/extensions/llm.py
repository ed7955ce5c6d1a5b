"""HTTP extension: foundation models behind the OpenAI-compatible API, under ``/openai/v1``.

``POST /openai/v1/chat/completions``, ``POST /openai/v1/completions`` (both streamed as
server-sent events with ``stream: true``), ``POST /openai/v1/embeddings``, ``GET
/openai/v1/models[/{model}]`` and ``GET /openai/v1/usage`` (the caller's own); for
administrators ``GET|PUT /v1/security/keys/{key_id}/llm`` (a key's PHI policy, its grant to
send identifiers, its budgets) and ``GET /v1/security/keys/{key_id}/usage``.

The ``model`` of a call is a registered name (its ``production`` alias), ``name@alias`` or
``name@version``; its runtime must be a ``GenerativeRuntime`` or an ``EmbeddingRuntime``
(``features/llm/protocol.py``). The pipeline itself (PHI policy, budgets, the generation
thread, the audit entry) is transport-free: ``features/llm/api.py``. Errors have OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``), those answered before the routes too
(the security middleware's 401 and 429, the role check's 403: ``llm_errors.py``).

Also the extension of the foundation-model runtime flavors (``features/llm/flavors.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp

from medserve.core.context import (
    Principal,
    made_request_id,
)
from medserve.core.errors import (
    AuditUnavailableError,
    InvalidRequestError,
    MedserveError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
)
from medserve.core.extensions import FlavorLoader
from medserve.core.phi import load_or_create_salt, pseudonymize
from medserve.features.llm import sse
from medserve.features.llm.api import (
    Caller,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    Generation,
    LlmService,
    is_language_model,
    model_entry,
    model_reference,
    openai_error,
    parse_request,
)
from medserve.features.llm.budgets import Budgets, Limits, LlmSettings, open_budgets
from medserve.features.llm.phi_policy import PhiConfigError, PhiUnavailableError
from medserve.features.llm.upstream_route import held_stream
from medserve.features.llm.usage import REFUSED
from medserve.features.security.guard import SecurityGuard
from medserve.features.security.keys import KeyLlmSettings
from medserve.serving.extension import ServingExtension
from medserve.serving.extensions.llm_errors import OpenAiErrors
from medserve.serving.extensions.security import (
    ACTION_SCOPE_KEY,
    AUDIT_LOG,
    AUDITED_SCOPE_KEY,
    PHI_SALT,
    visible,
)
from medserve.serving.http_errors import status_for
from medserve.serving.resources import ResourceKey, Resources, principal_of, resources_of

log = logging.getLogger(__name__)

router = APIRouter(tags=["openai"])

LLM_SERVICE: ResourceKey[LlmService] = ResourceKey("language-model service")
KEY_SETTINGS: ResourceKey[KeySettingsCache] = ResourceKey("keys' language-model settings")

_PREDICT = {"x-medserve-action": "predict"}

OPENAI_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
                "categories": {"type": "array", "items": {"type": "string"}},
            },
        }
    },
}
_ERROR_TEXT = {
    400: "A parameter is wrong or not supported (`param` names it)",
    401: "No credential, or an unknown, expired or revoked one",
    403: "The key's roles, grants or tenant do not allow this model",
    404: "No such model, version or alias, or not a language model",
    422: "The text holds patient identifiers and the PHI policy is block (categories named)",
    429: "A budget of the key, or its request rate, is spent (`code` names it; Retry-After)",
    500: "The model failed, or a PHI policy is misconfigured",
    502: "An upstream route's server failed, refused or broke its answer off (upstream_error)",
    503: "PHI detection, the audit trail, the model or an upstream route (its circuit breaker "
    "open: upstream_unavailable; its credential outside the server's allowlist: "
    "upstream_credential_not_allowed) is unavailable: nothing was sent",
    504: "An upstream route's server did not answer in time (upstream_timeout)",
}


def _responses(statuses: tuple[int, ...], stream: bool = False) -> dict[int | str, Any]:
    """OpenAI's error shape, for the routes' own errors and (``llm_errors.py``) for those the
    security middleware and the role check answer before them."""
    found: dict[int | str, Any] = {}
    if stream:
        found[200] = {
            "description": "The answer, or with `stream: true` server-sent events",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    # what the security middleware and the role check may answer before any route (the
    # middleware of llm_errors.py gives those OpenAI's shape too)
    for status in sorted(set(statuses) | {400, 401, 403, 429, 503}):
        found[status] = {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": OPENAI_ERROR}},
        }
    return found


_CALL_ERRORS = (400, 401, 403, 404, 422, 429, 500, 502, 503, 504)


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses its own body (so that every error,
    malformed bodies included, has OpenAI's shape)."""
    return {
        **_PREDICT,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        },
    }


class KeySettingsCache:
    """Each key's language-model settings, read once per security change (the guard's change
    counter moves with every key change, in every worker)."""

    def __init__(self, guard: object) -> None:
        self.guard = guard if isinstance(guard, SecurityGuard) else None
        self._generation = -1
        self._settings: dict[str, KeyLlmSettings] = {}

    async def of(self, principal: Principal) -> KeyLlmSettings:
        guard = self.guard
        if guard is None or principal.key_id is None:  # security off, or a JWT: defaults
            return KeyLlmSettings()
        generation = guard.counter.read()
        if generation != self._generation:
            self._settings = {}
            self._generation = generation
        found = self._settings.get(principal.key_id)
        if found is None:
            found = await asyncio.to_thread(guard.store.llm_settings, principal.key_id)
            self._settings[principal.key_id] = found
        return found


def _limits(settings: KeyLlmSettings) -> Limits:
    return Limits(
        requests_per_minute=settings.requests_per_minute,
        tokens_per_minute=settings.tokens_per_minute,
        tokens_per_day=settings.tokens_per_day,
        max_tokens=settings.max_tokens,
        max_context=settings.max_context,
    )


def _status(exc: MedserveError) -> int:
    if isinstance(exc, PhiUnavailableError):
        return 503
    if isinstance(exc, PhiConfigError):
        return 500
    return status_for(exc)


def _error(exc: MedserveError) -> Response:
    status = _status(exc)
    headers = {}
    if isinstance(exc, RateLimitedError):
        headers["retry-after"] = str(max(1, round(exc.retry_after_s + 0.5)))
    if status < 500 or isinstance(exc, PhiUnavailableError | PhiConfigError):
        REFUSED.labels(exc.code).inc()
    return Response(
        orjson.dumps(openai_error(exc, status)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError("the body is not valid JSON") from exc


async def caller_of(request: Request, principal: Principal) -> Caller:
    """The caller of an LLM route: its key's PHI policy and limits, its client address, the
    pseudonym of its patient header (public: the console's chat builds its caller the same way)."""
    resources = resources_of(request)
    settings = await resources.get(KEY_SETTINGS).of(principal)
    client = request.scope.get("client")
    patient = request.headers.get("x-patient-id")
    salt = resources.get(LLM_SERVICE).salt
    return Caller(
        principal=principal,
        phi_policy=settings.phi_policy,
        phi_allow=settings.phi_allow,
        limits=_limits(settings),
        client=client[0] if client else None,
        patient_hash=pseudonymize(patient, salt=salt) if patient else None,
    )


Prepare = Callable[[LlmService, Caller, Any, Any, str], Awaitable[Any]]


async def _serve(request: Request, kind: type[Any], prepare: Prepare) -> Response:
    """What the three calls share: parse, authorize on the model, admit, answer (or stream)."""
    try:
        resources = resources_of(request)
        unavailable = resources.plane.unavailable()
        if unavailable is not None:  # the audit trail cannot be written: fail closed
            raise AuditUnavailableError(unavailable)
        principal = principal_of(request)
        parsed = parse_request(kind, await _body(request))
        name, ref = model_reference(parsed.model)
        action = request.scope.get(ACTION_SCOPE_KEY)
        if action is not None:  # the middleware's entry of a refusal names the model
            request.scope[ACTION_SCOPE_KEY] = (action[0], name, ref, action[3])
        resources.guard.authorize(principal, "predict", name)
        model = await resources.plane.model(name, ref)
        if not is_language_model(model):
            raise InvalidRequestError(f"model {name!r} is not a language model")
        service = resources.get(LLM_SERVICE)
        caller = await caller_of(request, principal)
        request_id, _ = made_request_id()
        answer = await prepare(service, caller, model, parsed, request_id)
        if isinstance(answer, Generation):
            if getattr(parsed, "stream", False):
                request.scope[AUDITED_SCOPE_KEY] = True  # "started" and "finished" entries
                remote = getattr(model.runtime, "remote", False)  # an upstream route
                return StreamingResponse(
                    await held_stream(answer) if remote else answer.start_stream(),
                    media_type=sse.MEDIA_TYPE,
                    headers={"x-accel-buffering": "no"},
                )
            answer = await answer.answer()
        request.scope[AUDITED_SCOPE_KEY] = True  # the call's own entry, journaled above
        # embeddings carry float32 rows (features/llm/api.py): each value in its shortest form
        body = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(body, media_type="application/json")
    except MedserveError as exc:
        return _error(exc)


@router.post(
    "/openai/v1/chat/completions",
    openapi_extra=_schema(ChatRequest),
    responses=_responses(_CALL_ERRORS, stream=True),
)
async def chat_completions(request: Request) -> Response:
    """OpenAI's chat completions (``stream: true`` for server-sent events)."""
    return await _serve(request, ChatRequest, lambda s, c, m, r, rid: s.prepare_chat(c, m, r, rid))


@router.post(
    "/openai/v1/completions",
    openapi_extra=_schema(CompletionRequest),
    responses=_responses(_CALL_ERRORS, stream=True),
)
async def completions(request: Request) -> Response:
    """OpenAI's (legacy) text completions: one prompt per call."""
    return await _serve(
        request, CompletionRequest, lambda s, c, m, r, rid: s.prepare_completion(c, m, r, rid)
    )


@router.post(
    "/openai/v1/embeddings",
    openapi_extra=_schema(EmbeddingRequest),
    responses=_responses(_CALL_ERRORS),
)
async def embeddings(request: Request) -> Response:
    """OpenAI's embeddings: one text or a batch; ``encoding_format`` float or base64
    (little-endian float32)."""
    return await _serve(
        request, EmbeddingRequest, lambda s, c, m, r, rid: s.embeddings(c, m, r, rid)
    )


def _language_models(request: Request) -> list[dict[str, Any]]:
    manager = resources_of(request).plane.manager
    found = []
    for name, alias, _ in manager.served():
        if alias != "production" or not visible(request, name):
            continue
        model = manager.cached(name, "production")
        if model is not None and is_language_model(model):
            found.append(model_entry(model, None))
    return found


@router.get("/openai/v1/models", openapi_extra=_PREDICT, responses=_responses(()))
async def list_models(request: Request) -> Response:
    """The language models the caller may use: those with a ``production`` alias, filtered by
    the key's tenant and grants."""
    return Response(
        orjson.dumps({"object": "list", "data": _language_models(request)}),
        media_type="application/json",
    )


@router.get(
    "/openai/v1/models/{model_id}",
    openapi_extra=_PREDICT,
    responses=_responses((400, 401, 403, 404)),
)
async def get_model(request: Request, model_id: str) -> Response:
    """One language model (``name``, ``name@alias`` or ``name@version``)."""
    try:
        name, ref = model_reference(model_id)
        resources = resources_of(request)
        resources.guard.authorize(principal_of(request), "predict", name)
        model = await resources.plane.model(name, ref)
        if not is_language_model(model):
            raise NotFoundError(f"model {name!r} is not a language model")
        return Response(orjson.dumps(model_entry(model, None)), media_type="application/json")
    except MedserveError as exc:
        return _error(exc)


def _usage_view(store: Budgets, key: str, limits: Limits, days: int) -> dict[str, Any]:
    since = (datetime.now(UTC) - timedelta(days=days - 1)).date().isoformat()
    return {
        "key_id": key,
        "limits": asdict(limits),
        "current": store.window(key),
        "days": [asdict(r) for r in store.usage(key, since)],
    }


@router.get("/openai/v1/usage", openapi_extra=_PREDICT, responses=_responses((401, 403, 500)))
async def own_usage(request: Request, days: int = Query(default=7, ge=1, le=400)) -> Response:
    """The caller's own usage: its limits, what it used this minute and today, per day."""
    try:
        resources = resources_of(request)
        principal = principal_of(request)
        caller = await caller_of(request, principal)
        service = resources.get(LLM_SERVICE)
        limits = service.defaults.over(caller.limits)
        view = await asyncio.to_thread(
            _usage_view, service.budgets, caller.budget_key, limits, days
        )
        return Response(orjson.dumps(view), media_type="application/json")
    except MedserveError as exc:
        return _error(exc)


_INT32 = 2**31 - 1
_INT64 = 10**15  # far above any budget, and exact as a JSON number


class KeyLlmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phi_policy: Literal["allow", "redact", "block"] | None = Field(
        default=None, description="null: the model's policy."
    )
    phi_allow: StrictBool = Field(
        default=False, description="The grant without which 'allow' is applied as 'redact'."
    )
    requests_per_minute: int | None = Field(default=None, gt=0, le=_INT32)
    tokens_per_minute: int | None = Field(default=None, gt=0, le=_INT64)
    tokens_per_day: int | None = Field(default=None, gt=0, le=_INT64)
    max_tokens: int | None = Field(default=None, gt=0, le=_INT32)
    max_context: int | None = Field(default=None, gt=0, le=_INT32)


def _guard(request: Request) -> SecurityGuard:
    guard = resources_of(request).guard
    if not isinstance(guard, SecurityGuard):
        raise InvalidRequestError("security is off on this server")
    return guard


async def _same_tenant(request: Request, guard: SecurityGuard, key_id: str) -> None:
    """A tenant's administrator manages only its own tenant's keys."""
    principal = principal_of(request)
    keys = {k.key_id: k for k in await asyncio.to_thread(guard.store.list_keys)}
    key = keys.get(key_id)
    if key is None or key.state() == "revoked":  # a revoked key is gone (its usage too)
        raise NotFoundError(f"no active API key with id {key_id!r}")
    if principal.tenant is not None and key.tenant != principal.tenant:
        raise PermissionDeniedError("a tenant administrator manages only its own tenant's keys")


@router.get("/v1/security/keys/{key_id}/llm", tags=["security"])
async def get_key_llm(request: Request, key_id: str) -> dict[str, Any]:
    """A key's language-model settings (null: the server's default or the model's policy)."""
    guard = _guard(request)
    await _same_tenant(request, guard, key_id)
    return asdict(await asyncio.to_thread(guard.store.llm_settings, key_id))


@router.put("/v1/security/keys/{key_id}/llm", tags=["security"])
async def put_key_llm(request: Request, key_id: str, body: KeyLlmRequest) -> dict[str, Any]:
    """Replace a key's language-model settings; audited with the change, applied by every
    worker from its next request."""
    guard = _guard(request)
    await _same_tenant(request, guard, key_id)
    actor = principal_of(request).subject
    settings = KeyLlmSettings(**body.model_dump())
    saved = await asyncio.to_thread(
        lambda: guard.store.set_llm_settings(key_id, settings, actor=actor)
    )
    request.scope[AUDITED_SCOPE_KEY] = True  # the change wrote its own entry (the outbox)
    return asdict(saved)


@router.get("/v1/security/keys/{key_id}/usage", tags=["security"])
async def key_usage(
    request: Request, key_id: str, days: int = Query(default=7, ge=1, le=400)
) -> dict[str, Any]:
    """A key's language-model usage (administrators)."""
    guard = _guard(request)
    await _same_tenant(request, guard, key_id)
    service = resources_of(request).get(LLM_SERVICE)
    own = await asyncio.to_thread(guard.store.llm_settings, key_id)
    limits = service.defaults.over(_limits(own))
    return await asyncio.to_thread(_usage_view, service.budgets, key_id, limits, days)


# --------------------------------------------------------------------------------------------
# Start-up wiring
# --------------------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(resources: Resources) -> AsyncIterator[None]:
    settings = LlmSettings()
    home = resources.settings.home
    # a deployment's nodes over PostgreSQL with shared limits count one budget (docs/scale-out.md)
    engine = getattr(resources.registry.store, "engine", None)
    budgets = await asyncio.to_thread(
        open_budgets,
        home,
        engine if isinstance(engine, Engine) else None,
        resources.settings.shared_rate_limits,
    )
    executor = ThreadPoolExecutor(settings.generation_threads, thread_name_prefix="medserve-llm")
    salt = resources.find(PHI_SALT)
    if salt is None:  # security off: the home's salt all the same (hashes are keyed)
        salt = await asyncio.to_thread(load_or_create_salt, home)
    service = LlmService(settings, budgets, executor, audit=resources.find(AUDIT_LOG), salt=salt)
    resources.provide(LLM_SERVICE, service)
    resources.provide(KEY_SETTINGS, KeySettingsCache(resources.guard))
    try:
        yield
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            budgets.close()


class LlmExtension(ServingExtension):
    """Foundation models: the OpenAI-compatible API and the GGUF and embedding flavors."""

    name = "llm"
    order = 70  # after security: it uses the audit trail and the PHI salt
    router = router

    def runtime_flavors(self) -> Mapping[str, FlavorLoader]:
        from medserve.features.llm.flavors import RUNTIME_FLAVORS  # noqa: PLC0415

        return RUNTIME_FLAVORS

    def lifespan(self, resources: Resources) -> AbstractAsyncContextManager[None]:
        return lifespan(resources)

    def wrap(self, app: ASGIApp, resources: Resources) -> ASGIApp:
        """Outside security (a higher order): every error under ``/openai/`` in OpenAI's shape,
        the middleware's own 401/429/503 and the role check's 403 included (llm_errors.py)."""
        return OpenAiErrors(app)


extension = LlmExtension()

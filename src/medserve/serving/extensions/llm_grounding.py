"""HTTP extension: answers grounded in a patient's FHIR record,
``POST /v1/models/{name}/fhir-answer`` (``?version=`` an alias or a number; production by
default). docs/llm-grounding.md.

The body is a FHIR Bundle and a question (``features/llm/grounding.py``). Both calls it makes go
through the language-model pipeline of ``/openai/v1`` (``LlmService``): the embeddings that
retrieve (the PHI policy applies to the texts, the key's budget counts them, they are audited)
and the constrained chat that answers (PHI policy, budgets, output scan, audit). One more audit
entry, ``llm.fhir_answer``, records the outcome: counts, the status and a keyed hash of the
Bundle, never its content. Errors have OpenAI's shape, as on ``/openai/v1``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from medserve.core.audit import AuditEntry
from medserve.core.context import made_request_id
from medserve.core.errors import (
    AuditUnavailableError,
    InvalidRequestError,
    MedserveError,
    NotFoundError,
)
from medserve.features.llm import grounding
from medserve.features.llm.api import (
    Caller,
    ChatRequest,
    EmbeddingRequest,
    LlmService,
    parse_request,
)
from medserve.features.llm.protocol import EmbeddingRuntime, GenerativeRuntime
from medserve.serving.extension import ServingExtension
from medserve.serving.extensions.llm import (
    LLM_SERVICE,
    OPENAI_ERROR,
    _body,
    _error,
    _schema,
    caller_of,
)
from medserve.serving.extensions.security import ACTION_SCOPE_KEY, AUDITED_SCOPE_KEY
from medserve.serving.resources import principal_of, resources_of

router = APIRouter(tags=["openai"])

_ERRORS = {
    400: "A field is wrong (named in the message): the Bundle, top_k, the embedding model",
    401: "No credential, or an unknown, expired or revoked one",
    403: "The key's roles, grants or tenant do not allow one of the two models",
    404: "No such model or version, or not a generative (or embedding) model",
    422: "The texts hold patient identifiers and the PHI policy is block (categories named)",
    429: "A budget of the key is spent, or its request rate",
    500: "A model failed, or a PHI policy is misconfigured",
    502: "The chat model is an upstream route whose server failed (upstream_error)",
    503: "PHI detection, the audit trail, a model or an upstream route is unavailable",
    504: "The chat model is an upstream route whose server did not answer in time",
}
# Refusals answered before the route (the security middleware's 401 and 429, the role check's
# 403) keep medserve's error body on this path (it is not under /openai/).
_EITHER = {"anyOf": [OPENAI_ERROR, {"$ref": "#/components/schemas/Error"}]}


def _responses() -> dict[int | str, Any]:
    return {
        status: {
            "description": text,
            "content": {
                "application/json": {
                    "schema": _EITHER if status in (401, 403, 429) else OPENAI_ERROR
                }
            },
        }
        for status, text in _ERRORS.items()
    }


async def _embed(
    service: LlmService,
    caller: Caller,
    name: str,
    ref: str,
    texts: list[str],
    request: Request,
    request_id: str,
) -> np.ndarray:
    resources = resources_of(request)
    resources.guard.authorize(principal_of(request), "predict", name)
    model = await resources.plane.model(name, ref)
    runtime = model.runtime
    if not isinstance(runtime, EmbeddingRuntime) or getattr(runtime, "remote", False):
        raise InvalidRequestError(
            f"embedding_model {name!r} is not an embedding model served in process",
            details=[{"field": "embedding_model", "rule": "an in-process embedding model"}],
        )
    body = EmbeddingRequest(model=f"{name}@{ref}", input=texts)
    answer = await service.embeddings(caller, model, body, request_id)
    return np.asarray([row["embedding"] for row in answer["data"]], dtype=np.float32)


@router.post(
    "/v1/models/{name}/fhir-answer",
    openapi_extra=_schema(grounding.FhirAnswerRequest),
    responses=_responses(),
)
async def fhir_answer(
    request: Request,
    name: str,
    version: str = Query(default="production", description="An alias or a version number."),
) -> Response:
    """Answer a question about one patient from their FHIR Bundle, citing the Bundle's
    resources (retrieved by embedding similarity; citations constrained to them). An answer
    that cites nothing it retrieved is refused (``status: refused``) or, with
    ``on_uncited: "flag"``, returned with ``grounded: false``. Nothing of the Bundle is kept."""
    try:
        resources = resources_of(request)
        unavailable = resources.plane.unavailable()
        if unavailable is not None:  # the audit trail cannot be written: fail closed
            raise AuditUnavailableError(unavailable)
        principal = principal_of(request)
        parsed = grounding.parse_request(await _body(request))
        action = request.scope.get(ACTION_SCOPE_KEY)
        if action is not None:
            request.scope[ACTION_SCOPE_KEY] = (action[0], name, version, action[3])
        resources.guard.authorize(principal, "predict", name)
        service = resources.get(LLM_SERVICE)
        model = await resources.plane.model(name, version)
        if not isinstance(model.runtime, GenerativeRuntime):  # no such answer for this model
            raise NotFoundError(
                f"model {name!r} is not a generative language model: it has no fhir-answer"
            )
        caller = await caller_of(request, principal)
        request_id, _ = made_request_id()
        # the model is found first (a 404), then the Bundle is read (a 400 naming the entry)
        items = await asyncio.to_thread(grounding.bundle_resources, parsed.bundle)
        emb_name, _, emb_ref = parsed.embedding_model.partition("@")
        vectors = await _embed(
            service,
            caller,
            emb_name,
            emb_ref or "production",
            [parsed.question, *(r.text for r in items)],
            request,
            request_id,
        )
        ranked = grounding.retrieve(vectors[0], vectors[1:], min(parsed.top_k, len(items)))
        retrieved = [items[i] for i, _ in ranked]
        chat = parse_request(
            ChatRequest,
            {
                "model": f"{name}@{version}",
                "messages": [
                    {"role": "system", "content": grounding.SYSTEM_PROMPT},
                    {"role": "user", "content": grounding.user_prompt(parsed.question, retrieved)},
                ],
                "max_tokens": parsed.max_tokens,
                "temperature": parsed.temperature,
                "seed": parsed.seed,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "grounded_answer",
                        "schema": grounding.citation_schema([r.label for r in retrieved]),
                        "strict": True,
                    },
                },
            },
        )
        generation = await service.prepare_chat(caller, model, chat, request_id)
        answer = await generation.answer()
        choice = answer["choices"][0]
        content = choice["message"].get("content") or ""
        result = grounding.interpret(content, retrieved, parsed.on_uncited)
        _audit(service, caller, model.name, model.number, request_id, parsed, items, result)
        request.scope[AUDITED_SCOPE_KEY] = True
        body = _response(model.name, model.number, result, retrieved, ranked, choice, answer)
        return Response(orjson.dumps(body), media_type="application/json")
    except MedserveError as exc:
        return _error(exc)


def _response(
    name: str,
    number: int,
    result: grounding.Grounded,
    retrieved: list[grounding.Resource],
    ranked: list[tuple[int, float]],
    choice: Mapping[str, Any],
    answer: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "object": "fhir.answer",
        "model": name,
        "version": number,
        "status": result.status,
        "grounded": result.status == "answered",
        "answer": result.answer,
        "citations": [
            {"reference": r.reference, "resourceType": r.resource_type, "label": r.label}
            for r in result.citations
        ],
        "reason": result.reason,
        "unknown_citations": result.uncited_labels,
        "retrieved": [
            {"reference": r.reference, "label": r.label, "score": round(score, 4)}
            for r, (_, score) in zip(retrieved, ranked, strict=True)
        ],
        "finish_reason": choice.get("finish_reason"),
        "usage": answer.get("usage"),
    }


def _audit(
    service: LlmService,
    caller: Caller,
    model: str,
    number: int,
    request_id: str,
    parsed: grounding.FhirAnswerRequest,
    items: list[grounding.Resource],
    result: grounding.Grounded,
) -> None:
    if service.audit is None:
        return
    detail = {
        "endpoint": "fhir_answer",
        "status": result.status,
        "resources": len(items),
        "retrieved": min(parsed.top_k, len(items)),
        "cited": len(result.citations),
        "uncited_labels": len(result.uncited_labels),
        "bundle_hmac": service.keyed_hash(orjson.dumps(parsed.bundle, option=orjson.OPT_SORT_KEYS)),
        "question_hmac": service.keyed_hash(parsed.question),
    }
    principal = caller.principal
    service.audit.enqueue(
        AuditEntry(
            actor=principal.subject,
            key_id=principal.key_id,
            action="llm.fhir_answer",
            model=model,
            version=str(number),
            client=caller.client,
            outcome=200,
            request_id=request_id,
            patient_hash=caller.patient_hash,
            detail=orjson.dumps(detail).decode(),
        )
    )


class LlmGroundingExtension(ServingExtension):
    """Grounded answers over a FHIR Bundle (after the llm extension: it uses its service)."""

    name = "llm-grounding"
    order = 71
    router = router


extension = LlmGroundingExtension()

"""The chat page for the generative models (``/openai/v1``'s models, e.g. the demo's
``smollm2-chat``), with the PHI redaction visible.

The call goes through the language-model service exactly as ``POST /openai/v1/chat/completions``
does (the key's PHI policy and budgets, the audit entries, the hold-back redactor on the
answer): the console only shows, before the answer, the prompt as the model receives it (the
same scanner under the same policy), so a clinician sees what was redacted. Streamed to the
browser as one JSON object per line; without JavaScript the form posts and the whole answer
comes back in the page.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from medserve.core.context import made_request_id
from medserve.core.errors import InvalidRequestError, MedserveError
from medserve.faces.console.web import PREFIX, Console, Page, Who
from medserve.features.llm.api import ChatRequest, Generation, is_language_model, parse_request
from medserve.serving.extensions import llm as llm_ext

MAX_TOKENS = 96
SYSTEM = "You are a concise assistant."


async def _generative(c: Console, who: Who) -> list[str]:
    """The chat models this caller may use: served under ``production``, visible to it, with
    a generative runtime (the served models are loaded already)."""
    out = []
    for served in c.resources.plane.list_served():
        name = served["name"]
        if "production" not in served["aliases"] or not c.visible(who, name):
            continue
        try:
            model = await c.resources.plane.model(name, "production")
        except MedserveError:
            continue
        if is_language_model(model) and hasattr(model.runtime, "chat"):
            out.append(name)
    return out


async def chat_page(c: Console, request: Request, who: Who) -> Response:
    if c.resources.find(llm_ext.LLM_SERVICE) is None:
        raise InvalidRequestError("the language-model extension is not running on this server")
    models = await _generative(c, who)
    return c.render(request, "chat.html", who, models=models, answer=None)


async def _prepare(
    c: Console, request: Request, who: Who
) -> tuple[str, str, str, set[str], Generation]:
    """Authorize, build the OpenAI-shaped request, scan the prompt as the service will, admit."""
    form = request.state.form
    model_name = str(form.get("model") or "").strip()
    prompt = str(form.get("prompt") or "").strip()
    if not model_name:
        raise InvalidRequestError("model: choose a model")
    if not prompt:
        raise InvalidRequestError("prompt: write a question")
    try:
        max_tokens = int(str(form.get("max_tokens") or MAX_TOKENS))
    except ValueError:
        raise InvalidRequestError("max_tokens: a whole number from 1 to 512") from None
    if not 1 <= max_tokens <= 512:
        raise InvalidRequestError("max_tokens: a whole number from 1 to 512")
    c.authorize(request, who, "predict", model_name)
    service = c.resources.get(llm_ext.LLM_SERVICE)
    model = await c.resources.plane.model(model_name, "production")
    if not is_language_model(model):
        raise InvalidRequestError(f"model {model_name!r} is not a language model")
    caller = await llm_ext.caller_of(request, who.principal)
    policy = service.policy(caller, model)
    # what the model will receive: the service scans with the same scanner and policy
    scan = await asyncio.to_thread(service.scanner.scan, prompt, policy, "messages[1]")
    body = {
        "model": model_name,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    parsed = parse_request(ChatRequest, body)
    request_id, _ = made_request_id()
    generation = await service.prepare_chat(caller, model, parsed, request_id)
    return model_name, prompt, scan.text, scan.categories, generation


async def chat_answer(c: Console, request: Request, who: Who) -> Response:
    """Without JavaScript: the whole answer in the page."""
    models = await _generative(c, who)
    try:
        model, prompt, sent, categories, generation = await _prepare(c, request, who)
    except MedserveError as exc:
        return c.render(request, "chat.html", who, status=400, models=models, error=str(exc))
    answer = await generation.answer()
    text = answer["choices"][0]["message"]["content"]
    return c.render(
        request,
        "chat.html",
        who,
        models=models,
        chosen=model,
        prompt=prompt,
        sent=sent,
        categories=sorted(categories),
        answer=text,
    )


def _line(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data) + b"\n"


async def chat_stream(c: Console, request: Request, who: Who) -> Response:
    """The answer as it is generated: first the prompt as sent, then text chunks."""
    try:
        _, _, sent, categories, generation = await _prepare(c, request, who)
    except MedserveError as exc:
        return Response(_line({"error": str(exc)}), status_code=400, media_type="text/plain")
    events = generation.start_stream()

    async def lines() -> AsyncIterator[bytes]:
        yield _line({"sent": sent, "redacted": sorted(categories)})
        async for event in events:
            for raw in event.split(b"\n"):
                if not raw.startswith(b"data: ") or raw == b"data: [DONE]":
                    continue
                data = orjson.loads(raw[6:])
                if "error" in data:
                    yield _line({"error": data["error"].get("message", "failed")})
                    continue
                for choice in data.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield _line({"text": text})

    return StreamingResponse(
        lines(), media_type="application/x-ndjson", headers={"x-accel-buffering": "no"}
    )


def pages() -> list[Page]:
    return [
        Page(f"{PREFIX}/chat", chat_page, "predict"),
        Page(f"{PREFIX}/chat", chat_answer, None, ("POST",)),
        Page(f"{PREFIX}/chat/stream", chat_stream, None, ("POST",)),
    ]

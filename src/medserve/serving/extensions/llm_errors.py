"""Every error answer under ``/openai/`` in OpenAI's shape, whoever answered it.

The routes of ``serving/extensions/llm.py`` answer their own errors in OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``). Others answer before them or around them
in medserve's (``{"error": "...", "code": ..., "details": [...]}``): the security middleware (401
without or with a bad key, the guard's 429 with ``Retry-After``, 503 when the audit trail cannot
record), the route dependency that checks roles (403), the body limit (413), and FastAPI itself
for an unknown path (404) or method (405). The official ``openai`` client raises its typed
exceptions by status (``AuthenticationError``, ``PermissionDeniedError``, ``RateLimitError``...)
and reads ``message``, ``type``, ``param`` and ``code`` from the body, so this middleware,
wrapped around all of them by the llm extension, rewrites such a body for ``/openai/`` paths:
message, code and the first detail's field are kept; the headers (``Retry-After``,
``WWW-Authenticate``, the security headers) pass unchanged. Answers under 400 (streams
included) are not touched, nor bodies already in OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from http import HTTPStatus
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from medserve.features.llm.api import error_type

PREFIX = "/openai/"


def openai_body(raw: bytes, status: int) -> bytes:
    """``raw`` (an error body of any shape) as OpenAI's error body."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return raw  # already OpenAI's
    param: str | None = None
    code: str | None = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):  # medserve's
        message = body["error"]
        code = body.get("code") if isinstance(body.get("code"), str) else None
        details = body.get("details")
        if isinstance(details, list) and details and isinstance(details[0], dict):
            param = str(details[0].get("field") or "") or None
    elif isinstance(body, dict) and "detail" in body:  # FastAPI's and Starlette's
        detail = body["detail"]
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            location = [str(p) for p in detail[0].get("loc", ()) if p not in ("body", "query")]
            param = ".".join(location) or None
            message = f"{param or 'request'}: {detail[0].get('msg', 'invalid')}"
            code = "invalid_request"
        else:
            message = str(detail)
    else:
        message = raw.decode("utf-8", "replace")[:500].strip()
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    error = {
        "message": message or phrase,
        "type": error_type(status),
        "param": param,
        "code": code or phrase.lower().replace(" ", "_"),
    }
    return orjson.dumps({"error": error})


class OpenAiErrors:
    """The middleware (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        start: MutableMapping[str, Any] | None = None
        parts: list[bytes] = []

        async def rewrite(message: MutableMapping[str, Any]) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and int(message["status"]) >= 400:
                start = message  # an error: held until its body is whole (they are small)
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = openai_body(b"".join(parts), int(start["status"]))
            headers = [
                (k, v)
                for k, v in start.get("headers", [])
                if k.lower() not in (b"content-length", b"content-type")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)

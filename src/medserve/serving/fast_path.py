"""A raw ASGI handler for the two hot endpoints (v2 infer, records predict).

FastAPI's routing, dependency injection and response classes cost more than the model itself
for a one-row tabular prediction, so the hot endpoints are served here: read the body (bounded),
decode with orjson, call the data plane, encode with orjson. Everything else goes to the FastAPI
app, which also documents these endpoints in OpenAPI and serves them identically.
"""

from __future__ import annotations

import asyncio
import logging
import math
from urllib.parse import parse_qs

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medserve.core.context import PRINCIPAL_SCOPE_KEY, RequestContext, made_request_id
from medserve.core.errors import (
    AuthenticationError,
    InvalidRequestError,
    MedserveError,
    PayloadTooLargeError,
    RateLimitedError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
)
from medserve.core.events import RefusalEvent
from medserve.serving import metrics
from medserve.serving.auth_failures import auth_failure_reason
from medserve.serving.http_errors import status_for
from medserve.serving.media import FHIR_JSON, MediaRequest, wants_fhir
from medserve.serving.model_manager import ModelManager
from medserve.serving.resources import Resources

log = logging.getLogger(__name__)


HOT_PATH_SCOPE_KEY = "medserve.hot_path"
HotPath = tuple[str, str, str | None]


def hot_path_of(scope: Scope) -> HotPath | None:
    """The request's hot-path match, made once per request and kept in its scope (the security
    middleware and the fast path both need it)."""
    if HOT_PATH_SCOPE_KEY not in scope:
        scope[HOT_PATH_SCOPE_KEY] = match_hot_path(scope["method"], scope["path"])
    found: HotPath | None = scope[HOT_PATH_SCOPE_KEY]
    return found


def match_hot_path(method: str, path: str) -> HotPath | None:
    """``(protocol, model, version-or-alias)`` for a hot endpoint, else None."""
    if method != "POST":
        return None
    parts = path.split("/")
    # ['', 'v2', 'models', name, 'infer'] or ['', 'v2', 'models', name, 'versions', v, 'infer']
    n = len(parts)
    if n not in (5, 7) or parts[2] != "models" or parts[0] != "":
        return None
    if parts[1] == "v2" and parts[-1] == "infer":
        protocol = "v2"
    elif parts[1] == "v1" and parts[-1] == "predict":
        protocol = "records"
    else:
        return None
    if n == 7:
        if parts[4] != "versions" or not parts[5]:
            return None
        return protocol, parts[3], parts[5]
    return protocol, parts[3], None


def content_type_ok(value: bytes | None, binary: bool = False) -> bool:
    """JSON bodies (or binary tensors after a JSON header); a missing type is accepted."""
    if not value:
        return True
    media = value.split(b";", 1)[0].strip().lower()
    if binary and media == b"application/octet-stream":
        return True
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def split_binary_body(raw: bytes, header_length: bytes) -> tuple[bytes, bytes]:
    """Split a binary-extension body into its JSON header and the tensor bytes after it."""
    if not header_length.isdigit() or int(header_length) > len(raw):
        raise InvalidRequestError(
            "Inference-Header-Content-Length must be the byte length of the JSON header"
        )
    cut = int(header_length)
    return raw[:cut], raw[cut:]


async def next_message(receive: Receive, timeout_s: float) -> Message:
    """The next ASGI message, or ``RequestTimeoutError`` when the client stalls that long."""
    try:
        return await asyncio.wait_for(receive(), timeout_s)
    except TimeoutError as exc:
        raise RequestTimeoutError(
            f"the request body stalled for {timeout_s:g} s (MEDSERVE_BODY_TIMEOUT_S)"
        ) from exc


async def read_body(
    receive: Receive, limit: int, declared: int | None, timeout_s: float = 30.0
) -> bytes:
    if declared is not None and declared > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await next_message(receive, timeout_s)
        if message["type"] == "http.disconnect":
            raise InvalidRequestError("client disconnected before the body was complete")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class BodyLimit:
    """``MEDSERVE_MAX_BODY_BYTES`` for the routes behind the fast path (which reads its own bodies
    bounded): a declared length over the limit is answered 413 before anything reads the body,
    and a streamed body is cut off as soon as it passes the limit (413 as well)."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                exc = PayloadTooLargeError(
                    f"request body of {int(value)} bytes is over the limit of {self.limit}"
                )
                await send_json(send, 413, error_body(exc))
                return
        size = 0
        complete = False
        started = False

        async def bounded() -> Message:
            nonlocal size, complete
            # the body is read, or the answer has started without reading it (a streamed GET):
            # what follows waits for the disconnect, however long it streams (no body timeout)
            if complete or started:
                return await receive()
            try:
                message = await next_message(receive, self.timeout_s)
            except RequestTimeoutError as exc:  # what FastAPI lets through from a body read
                raise HTTPException(408, exc.message) from exc
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.limit:
                    # an HTTPException is what FastAPI lets through from a body read (anything
                    # else becomes a 400); the app's handler answers it as {"error", "code"}
                    raise HTTPException(
                        413, f"request body is over the limit of {self.limit} bytes"
                    )
                complete = not message.get("more_body", False)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, bounded, tracked)


async def send_json(
    send: Send,
    status: int,
    payload: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"application/json",
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(payload)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def error_body(exc: MedserveError) -> bytes:
    return orjson.dumps(exc.to_dict())


def _query(scope: Scope) -> dict[str, str]:
    raw: bytes = scope.get("query_string") or b""
    if not raw:
        return {}
    return {k: v[-1] for k, v in parse_qs(raw.decode("latin-1")).items()}


def _header_text(value: bytes | None, limit: int = 256) -> str | None:
    if not value:
        return None
    return value[:limit].decode("latin-1")


class HotPathApp:
    """Wraps the FastAPI app: hot endpoints here, everything else passed through.

    ``resources`` are the server's: the data plane, the guard and the media codecs (for example
    FHIR JSON on the records endpoint), all set up in the app's lifespan.
    """

    def __init__(
        self,
        fallback: ASGIApp,
        resources: Resources,
        max_body_bytes: int,
        body_timeout_s: float = 30.0,
    ):
        self.fallback = fallback
        self.resources = resources
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        matched = hot_path_of(scope)
        if matched is None:
            await self.fallback(scope, receive, send)
            return
        protocol, name, ref = matched
        content_type: bytes | None = None
        declared: int | None = None
        header_length: bytes | None = None
        request_id: bytes | None = None
        patient: bytes | None = None
        site: bytes | None = None
        accept: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                declared = int(value) if value.isdigit() else None
            elif key == b"inference-header-content-length":
                header_length = value
            elif key == b"x-request-id":
                request_id = value
            elif key == b"x-patient-id":
                patient = value
            elif key == b"x-site":
                site = value
            elif key == b"accept":
                accept = value
        rid = _header_text(request_id, 64)
        made: int | None = None
        if not rid:
            rid, made = made_request_id()
        extra = [(b"x-request-id", rid.encode("latin-1"))]
        caller_known = False  # until authenticated, the model name in the URL is anyone's text
        try:
            guard = self.resources.guard
            principal = await guard.authenticate(scope)
            caller_known = True
            guard.authorize(principal, "predict", name)
            client = scope.get("client")
            context = RequestContext(
                request_id=rid,
                protocol=protocol,
                principal=principal,
                client=client[0] if client else None,
                patient_id=_header_text(patient),
                site=_header_text(site),
                id_time_us=made,
            )
            media = content_type.split(b";", 1)[0].strip().lower() if content_type else b""
            handlers = self.resources.media_handlers
            handler = handlers.get((protocol, media))
            query = _query(scope)
            if handler is None and protocol == "records" and wants_fhir(accept, query):
                handler = handlers.get((protocol, FHIR_JSON))
            binary_ok = protocol == "v2" and header_length is not None
            if handler is None and not content_type_ok(content_type, binary_ok):
                raise UnsupportedMediaTypeError(
                    "Content-Type must be application/json for this endpoint (binary tensors: "
                    "application/octet-stream with an Inference-Header-Content-Length header)"
                )
            raw = await read_body(receive, self.max_body_bytes, declared, self.body_timeout_s)
            plane = self.resources.plane
            if handler is not None:
                request = MediaRequest(raw, media, accept, query)
                status, payload, payload_type = await handler(plane, name, ref, request, context)
                await send_json(send, status, payload, extra, payload_type)
                return
            binary: bytes | None = None
            if binary_ok and header_length is not None:
                raw, binary = split_binary_body(raw, header_length)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequestError(
                    f"malformed JSON body: {exc.msg} at position {exc.pos}"
                ) from exc
            if protocol == "v2":
                result = await plane.infer_v2(name, ref, body, binary, context)
            else:
                result = await plane.predict_records(name, ref, body, context)
        except MedserveError as exc:
            status = status_for(exc)
            code = exc.code
            if not caller_known:  # nothing stored names what an unauthenticated URL said
                matched = (protocol, UNNAMED, None)
                if isinstance(exc, AuthenticationError):  # which: no credential, or a bad one
                    code = auth_failure_reason(scope["headers"])
            else:  # a model or version this server does not serve is the caller's text
                matched = (protocol, *stored_names(self.resources.plane.manager, name, ref))
            metrics.record_error(matched[1], matched[2] or "production", protocol, status, exc.code)
            try:
                self._refused(scope, matched, rid, status, code, patient, caller_known, made)
            except MedserveError as unrecorded:  # fail closed: the trail cannot take it
                exc, status = unrecorded, status_for(unrecorded)
            if isinstance(exc, RateLimitedError):
                extra.append((b"retry-after", str(max(1, math.ceil(exc.retry_after_s))).encode()))
            await send_json(send, status, error_body(exc), extra)
            return
        except Exception:
            log.exception("prediction failed (request %s)", rid)
            if caller_known:
                matched = (protocol, *stored_names(self.resources.plane.manager, name, ref))
            else:
                matched = (protocol, UNNAMED, None)
            metrics.record_error(matched[1], matched[2] or "production", protocol, 500, "internal")
            try:
                self._refused(scope, matched, rid, 500, "internal", patient, caller_known, made)
            except MedserveError as unrecorded:  # fail closed: the trail cannot take it
                await send_json(send, status_for(unrecorded), error_body(unrecorded), extra)
                return
            await send_json(
                send, 500, b'{"error":"internal error while predicting","code":"internal"}', extra
            )
            return
        await send_json(send, 200, orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY), extra)

    def _refused(
        self,
        scope: Scope,
        matched: HotPath,
        request_id: str,
        status: int,
        code: str,
        patient: bytes | None,
        caller_known: bool,
        made: int | None,
    ) -> None:
        """The observe step of an error answer (audit): one place for successes and failures.
        The URL is kept only as its route: the model and version in it may be any text,
        identifiers included (``matched`` holds what may be kept of them)."""
        client = scope.get("client")
        versioned = caller_known and scope["path"].count("/") == 6
        path = _route_of(matched[0], versioned)
        self.resources.plane.refused(
            RefusalEvent(
                request_id=request_id,
                protocol=matched[0],
                model=matched[1],
                ref=matched[2],
                status=status,
                code=code,
                principal=scope.get(PRINCIPAL_SCOPE_KEY),
                client=client[0] if client else None,
                patient_id=_header_text(patient),
                method=scope["method"],
                path=path,
                id_time_us=made,
            )
        )


UNNAMED = "-"  # a model (or version) a refused request named that is not kept
_VERSION_DIGITS = 4  # a version number longer than this is not kept from a refused URL


def stored_names(manager: ModelManager, name: str, ref: str | None) -> tuple[str, str | None]:
    """What the audit and the metrics keep of the model and version a refused request's URL
    named: a model this server serves (under an alias) as named, any other name as ``-`` (it is
    the caller's text: a typo, or a patient's name); a served alias or a short version number
    as named, any other as ``-``. Cheap: the served aliases are in memory."""
    served = manager.served()
    if not any(model == name for model, _, _ in served):
        return UNNAMED, None
    if ref is None or (ref.isdigit() and len(ref) <= _VERSION_DIGITS):
        return name, ref
    if any(model == name and alias == ref for model, alias, _ in served):
        return name, ref
    return name, UNNAMED


def _route_of(protocol: str, versioned: bool = False) -> str:
    version = "/versions/{version}" if versioned else ""
    if protocol == "v2":
        return f"/v2/models/{{name}}{version}/infer"
    return f"/v1/models/{{name}}{version}/predict"

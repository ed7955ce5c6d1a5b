"""Domain errors as gRPC statuses: the one place, beside ``serving.http_errors``, where they
become a transport's codes.

The code follows the HTTP status the same error gets over REST (``http_errors.status_for``), so
the two transports cannot disagree:

==========================  ======================
REST status                 gRPC status
==========================  ======================
400, 415, 422               INVALID_ARGUMENT
401                         UNAUTHENTICATED
403                         PERMISSION_DENIED
404                         NOT_FOUND
408                         DEADLINE_EXCEEDED
409                         ABORTED
412                         FAILED_PRECONDITION
413, 429                    RESOURCE_EXHAUSTED
503                         UNAVAILABLE
500 (anything else)         INTERNAL
==========================  ======================

Besides the status message (the REST ``error`` text), the trailers carry what a program needs:
``grpc-status-details-bin``, Google's rich error model (``google.rpc.Status`` with an
``ErrorInfo`` whose reason is medserve's stable code, a ``BadRequest`` with one field violation
per problem, a ``RetryInfo`` on a rate limit), which ``grpc_status.rpc_status.from_call`` reads;
``medserve-error-bin``, the REST error body itself (JSON: ``error``, ``code``, ``details``); and
``retry-after`` (seconds) on a rate limit, as REST sends the header.

Trailers are bounded: gRPC clients refuse received metadata over 8 KiB (``grpc.max_metadata_size``,
a soft limit, and a hard one at 16 KiB) and then report ``RESOURCE_EXHAUSTED: Stream removed``
instead of the error. So the message is cut to :data:`MESSAGE_LIMIT` characters and the problems
carried in the two ``-bin`` trailers to what fits :data:`DETAILS_BUDGET` bytes (the first ones,
in request order, as REST's 422 keeps its first ``MAX_DETAILS``; the message counts them all).
"""

from __future__ import annotations

import math
from typing import Any

import grpc
import orjson
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from medserve.core.errors import MedserveError, RateLimitedError

GRPC_CODE_BY_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
ERROR_DOMAIN = "medserve"
DETAILS_KEY = "grpc-status-details-bin"
BODY_KEY = "medserve-error-bin"
Trailers = tuple[tuple[str, str | bytes], ...]
# Under gRPC clients' 8 KiB limit on received metadata, with room for the status, the
# message (percent-encoded), the request id and the HTTP/2 pseudo-headers.
MESSAGE_LIMIT = 1024
DETAILS_BUDGET = 6 * 1024


def grpc_code(status: int) -> grpc.StatusCode:
    return GRPC_CODE_BY_STATUS.get(status, grpc.StatusCode.INTERNAL)


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def bounded_message(message: str) -> str:
    """The status message (``grpc-message``) within :data:`MESSAGE_LIMIT` characters."""
    if len(message) <= MESSAGE_LIMIT:
        return message
    return message[: MESSAGE_LIMIT - 1] + "…"


def trailers(exc: MedserveError, status: int) -> Trailers:
    """The trailing metadata of an error answer with REST status ``status``, within the size
    gRPC clients accept (see the module docstring)."""
    message = bounded_message(exc.message)
    details = list(exc.details)
    while True:
        rich, body = _rich_status(exc, status, message, details), _body(exc, message, details)
        if len(rich) + len(body) <= DETAILS_BUDGET or not details:
            break
        details = details[: len(details) // 2]  # the first problems, in request order
    metadata: list[tuple[str, str | bytes]] = []
    if isinstance(exc, RateLimitedError):
        metadata.append(("retry-after", str(_retry_seconds(exc))))
    metadata.append((DETAILS_KEY, rich))
    metadata.append((BODY_KEY, body))
    return tuple(metadata)


def _retry_seconds(exc: RateLimitedError) -> int:
    return max(1, math.ceil(exc.retry_after_s))


def _rich_status(
    exc: MedserveError, status: int, message: str, details: list[dict[str, Any]]
) -> bytes:
    """``google.rpc.Status``: ErrorInfo (the stable code), BadRequest (one field violation per
    problem), RetryInfo on a rate limit."""
    info = error_details_pb2.ErrorInfo(reason=exc.code, domain=ERROR_DOMAIN)
    rich = status_pb2.Status(
        code=grpc_code(status).value[0], message=message, details=[_packed(info)]
    )
    if details:
        violations = [
            error_details_pb2.BadRequest.FieldViolation(
                field=_where(problem),
                description=str(problem.get("message", "")),
                reason=str(problem.get("rule") or ""),
            )
            for problem in details
        ]
        rich.details.append(_packed(error_details_pb2.BadRequest(field_violations=violations)))
    if isinstance(exc, RateLimitedError):
        delay = duration_pb2.Duration(seconds=_retry_seconds(exc))
        rich.details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    encoded: bytes = rich.SerializeToString()
    return encoded


def _body(exc: MedserveError, message: str, details: list[dict[str, Any]]) -> bytes:
    """The REST error body (``error``, ``code``, ``details``) of the answer."""
    body = exc.to_dict()
    body["error"] = message
    if details:
        body["details"] = details
    else:
        body.pop("details", None)
    return orjson.dumps(body)


def _where(problem: dict[str, object]) -> str:
    """A field violation's path: the field, under its row where the problem names one."""
    field = problem.get("field")
    row = problem.get("row")
    text = str(field) if field is not None else ""
    if row is not None:
        return f"rows[{row}].{text}" if text else f"rows[{row}]"
    return text

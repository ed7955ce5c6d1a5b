"""The one place where domain errors become HTTP statuses (and where the OpenAPI says so)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from medserve.core import errors

_STATUS: list[tuple[type[errors.MedserveError], int]] = [
    (errors.AuthenticationError, 401),
    (errors.PermissionDeniedError, 403),
    (errors.RateLimitedError, 429),
    (errors.PayloadTooLargeError, 413),
    (errors.RequestTimeoutError, 408),
    (errors.PreconditionFailedError, 412),
    (errors.ValidationFailedError, 422),
    (errors.UnsupportedMediaTypeError, 415),
    (errors.InvalidRequestError, 400),
    (errors.NotFoundError, 404),
    (errors.AlreadyExistsError, 409),
    (errors.PromotionBlockedError, 409),
    (errors.UnsafeArtifactError, 400),
    (errors.UpstreamTimeoutError, 504),
    (errors.UpstreamUnavailableError, 503),
    (errors.UpstreamError, 502),
    (errors.ModelUnavailableError, 503),
    (errors.ModelLoadError, 503),
    (errors.ArtifactIntegrityError, 503),
    (errors.StoreError, 503),
]

# Stable codes for the errors the HTTP framework raises itself (unknown path, wrong method).
_FRAMEWORK_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
}


def status_for(exc: errors.MedserveError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def code_for_status(status: int) -> str:
    """The ``code`` of an error the framework raised with only a status (404, 405, ...)."""
    return _FRAMEWORK_CODES.get(status, "http_error")


# -- OpenAPI ----------------------------------------------------------------------------------

ERROR_SCHEMA_NAME = "Error"
ERROR_SCHEMA: dict[str, Any] = {
    "title": ERROR_SCHEMA_NAME,
    "type": "object",
    "description": "Every error response: a message for people and a stable code for programs.",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string", "description": "What went wrong (never patient data)."},
        "code": {"type": "string", "description": "Stable code, e.g. `model_not_found`."},
        "details": {
            "type": "array",
            "items": {"type": "object"},
            "description": "Every problem found (field, row, rule), when there are several.",
        },
    },
}

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request: a bad parameter or body",
    401: "No credential, or an unknown, expired or revoked one",
    403: "The caller's roles or grants do not allow this",
    404: "No such model, version, alias or resource",
    408: "The request body stalled (MEDSERVE_BODY_TIMEOUT_S)",
    409: "Conflicts with the current state",
    413: "Request body over the size limit",
    415: "Unsupported Content-Type",
    422: "Input breaks the model's signature (every problem in `details`)",
    429: "Rate limit exceeded (see Retry-After)",
    502: "An upstream model server failed or broke its answer (upstream_error)",
    503: (
        "The model cannot be served right now (loading failed or unavailable), or what must be "
        "recorded of a prediction cannot be written (audit_unavailable, prediction_log_full)"
    ),
    504: "An upstream model server did not answer in time (upstream_timeout)",
}

ErrorStatuses = Callable[[str, str, dict[str, Any]], Iterable[int]]


def document_errors(openapi: dict[str, Any], statuses: ErrorStatuses) -> dict[str, Any]:
    """Declare on each operation the error statuses it can answer, all with the ``Error`` body.

    ``statuses(method, path, operation)`` says which. FastAPI's default 422
    ``HTTPValidationError`` is dropped: request validation answers 400 with an ``Error``.
    Changes ``openapi`` in place and returns it.
    """
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    components[ERROR_SCHEMA_NAME] = ERROR_SCHEMA
    ref = {"$ref": f"#/components/schemas/{ERROR_SCHEMA_NAME}"}
    for path, operations in openapi.get("paths", {}).items():
        for method, operation in operations.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in statuses(method.upper(), path, operation):
                responses.setdefault(
                    str(status),
                    {
                        "description": ERROR_DESCRIPTIONS.get(status, "Error"),
                        "content": {"application/json": {"schema": ref}},
                    },
                )
    return openapi

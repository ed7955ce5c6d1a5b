"""The domain error tree.

Every error carries a stable ``code`` that clients can match on; messages are for people. The core
never decides HTTP status codes: ``medserve.serving.http_errors`` maps these classes to statuses in
one place. Messages must never contain patient data or secrets.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MedserveError(Exception):
    """Base of every error medserve raises on purpose."""

    code: ClassVar[str] = "medserve_error"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


class NotFoundError(MedserveError):
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class VersionNotFoundError(NotFoundError):
    code = "version_not_found"


class AliasNotFoundError(NotFoundError):
    code = "alias_not_found"


class AlreadyExistsError(MedserveError):
    code = "already_exists"


class InvalidRequestError(MedserveError):
    """The caller asked for something malformed (bad name, bad argument, bad body)."""

    code = "invalid_request"


class ValidationFailedError(InvalidRequestError):
    """Input broke the model's signature; ``details`` lists every problem (row, field, rule)."""

    code = "validation_failed"


class PreconditionFailedError(MedserveError):
    """The request lacks data the service needs and cannot fetch (CDS Hooks prefetch: 412)."""

    code = "precondition_failed"


class UnsupportedFormatError(InvalidRequestError):
    code = "unsupported_format"


class UnsafeArtifactError(MedserveError):
    """An artifact format that can execute code on load (pickle, joblib) without the trust flag."""

    code = "unsafe_artifact"


class ArtifactIntegrityError(MedserveError):
    """An artifact's bytes no longer match the sha256 recorded when it was stored."""

    code = "artifact_integrity"


class ConversionError(MedserveError):
    code = "conversion_failed"


class ModelLoadError(MedserveError):
    """A version could not be loaded into a runtime; only that model is affected."""

    code = "model_load_failed"


class ComputationFailedError(MedserveError):
    """An explanation or a model failed on an input for a reason that is not the caller's
    (a 500): the message names the error's type, never the input."""

    code = "computation_failed"


class InternalError(MedserveError):
    """A fault of medserve's, not the caller's (a 500): what a transport answers for an
    unexpected exception, whose own words stay in the server's log."""

    code = "internal"


class ModelUnavailableError(MedserveError):
    code = "model_unavailable"


class UpstreamError(MedserveError):
    """A model served through an upstream route (another OpenAI-compatible server) failed: the
    upstream answered an error, broke its connection or sent what cannot be read (a 502). The
    message names the upstream's status or the failure's type, never the request's text."""

    code = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    """The upstream did not answer within the route's timeout (a 504)."""

    code = "upstream_timeout"


class UpstreamUnavailableError(UpstreamError):
    """The route's circuit breaker is open after repeated upstream failures: the call was not
    sent (a 503 until the breaker lets a trial call through)."""

    code = "upstream_unavailable"


class UpstreamCredentialNotAllowedError(UpstreamUnavailableError):
    """The route names a credential (an environment variable, a file) outside the server's
    allowlist (``MEDSERVE_UPSTREAM_CREDENTIALS``, ``MEDSERVE_UPSTREAM_SECRETS_DIR``): nothing is
    read or sent (a 503: the server's configuration, not the caller, must change)."""

    code = "upstream_credential_not_allowed"


class StoreError(MedserveError):
    code = "store_error"


class AuditUnavailableError(StoreError):
    """The audit trail or the prediction log cannot be written right now: under the default
    (fail closed) policy predictions are refused with 503 until writing works again."""

    code = "audit_unavailable"


class PayloadTooLargeError(InvalidRequestError):
    code = "payload_too_large"


class RequestTimeoutError(InvalidRequestError):
    """The client stopped sending its body: it is not waited for any longer."""

    code = "request_timeout"


class UnsupportedMediaTypeError(InvalidRequestError):
    code = "unsupported_media_type"


class AuthenticationError(MedserveError):
    """No credential, or one that is unknown, expired or revoked (never says which secret)."""

    code = "unauthenticated"


class PermissionDeniedError(MedserveError):
    code = "permission_denied"


class RateLimitedError(MedserveError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PromotionBlockedError(MedserveError):
    """The promotion gate refused to move the ``production`` alias; ``details`` lists why."""

    code = "promotion_blocked"

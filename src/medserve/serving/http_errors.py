"""The one place where domain errors become HTTP statuses."""

from __future__ import annotations

from medserve import errors

_STATUS: list[tuple[type[errors.MedserveError], int]] = [
    (errors.AuthenticationError, 401),
    (errors.PermissionDeniedError, 403),
    (errors.RateLimitedError, 429),
    (errors.PayloadTooLargeError, 413),
    (errors.ValidationFailedError, 422),
    (errors.UnsupportedMediaTypeError, 415),
    (errors.InvalidRequestError, 400),
    (errors.NotFoundError, 404),
    (errors.AlreadyExistsError, 409),
    (errors.PromotionBlockedError, 409),
    (errors.UnsafeArtifactError, 400),
    (errors.ModelUnavailableError, 503),
    (errors.ModelLoadError, 503),
    (errors.ArtifactIntegrityError, 503),
    (errors.StoreError, 503),
]


def status_for(exc: errors.MedserveError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500

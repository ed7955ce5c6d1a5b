"""A pydantic ``ValidationError`` as the 400 the project answers: the first wrong field and
its rule, in the message and in ``details`` (so clients can point at the field)."""

from __future__ import annotations

from pydantic import ValidationError

from medserve.core.errors import InvalidRequestError


def invalid_request(
    exc: ValidationError, *, where_empty: str, prefix: str = ""
) -> InvalidRequestError:
    """The error for ``exc``'s first problem; ``where_empty`` names a problem with no location
    (the body as a whole). The caller raises it ``from exc``."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ())) or where_empty
    return InvalidRequestError(
        f"{prefix}{where}: {error.get('msg', 'invalid')}",
        details=[{"field": where, "rule": str(error.get("type", "invalid"))}],
    )

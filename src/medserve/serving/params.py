"""Parameter types shared by the HTTP routes (validated as the OpenAPI document says)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BeforeValidator


def _iso_text(value: Any) -> Any:
    """Only ISO 8601 text: pydantic alone would also read a number as seconds since 1970."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
    raise ValueError("must be an ISO 8601 date-time, e.g. 2024-06-01T00:00:00Z")


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_text)]

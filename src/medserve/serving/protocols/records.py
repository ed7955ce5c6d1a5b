"""The records API (``{"instances": [{"feature": value, ...}]}``): request decoding and response
building, as ``oip_v2`` does for the Open Inference Protocol."""

from __future__ import annotations

from typing import Any

import numpy as np

from medserve.core.context import RequestContext
from medserve.core.errors import InvalidRequestError
from medserve.core.loaded_model import LoadedModel
from medserve.features.interop.units import convert as convert_unit


def parse_records_request(model: LoadedModel, body: Any) -> np.ndarray:
    """The validated model matrix of a records body (``body`` as JSON decoded it)."""
    rows = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(rows, list):
        raise InvalidRequestError(
            'the body must be {"instances": [{"feature": value, ...}, ...]}',
            details=[
                {
                    "field": "instances",
                    "rule": "required",
                    "message": "a list of records is required",
                }
            ],
        )
    if model.series is not None:  # trajectories: the reserved 'series' and 'as_of' keys
        return model.series.records_to_matrix(rows, convert=convert_unit)
    return model.validator.records_to_matrix(rows)


def explanation_asked(body: Any, context: RequestContext) -> tuple[bool, str | None]:
    """Whether an explanation was asked for (``"explain": true`` or the context's flag), and of
    which class (``"class"``)."""
    if not isinstance(body, dict):
        return context.explain, None
    target = body.get("class")
    return body.get("explain") is True or context.explain, None if target is None else str(target)


def build_records_response(
    model: LoadedModel, outputs: dict[str, np.ndarray], request_id: str, explanation: Any = None
) -> dict[str, Any]:
    response = model.records_response(outputs)
    response["request_id"] = request_id
    if explanation is not None:
        response["explanation"] = explanation
    return response

"""JSON answers after PHI redaction: still JSON, still the schema's, or said not to be.

``response_format`` ``json_object`` / ``json_schema`` makes the model follow a grammar, so what it
writes parses. The output scan runs after it and may replace an identifier by a token: inside a
string (``"Dr. [NAME]"``) the JSON survives, but a value outside one (``{"mrn": 55501234}`` ->
``{"mrn": [ID]}``) no longer parses, and a token in a constrained string (a ``pattern``, an
``enum``) may break the schema. Such an answer is never passed off as valid: the API answers it
with ``finish_reason: "content_filter"`` (OpenAI's reason for content changed by a filter) and,
for chat, a ``refusal`` saying why; the client reads both before ``json.loads``.

The schema is checked with ``jsonschema`` (Draft 2020-12 unless the schema says otherwise).
Nothing here quotes the answer: the reason names the JSON error's position or the schema rule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

CONTENT_FILTER = "content_filter"


def problem(text: str, schema: Mapping[str, Any] | None) -> str | None:
    """Why ``text`` is not (or no longer) a JSON answer of ``schema``; None when it is."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        where = getattr(exc, "pos", None)
        return f"the redacted answer is not valid JSON (at character {where})"
    if response_is_object(schema) and not isinstance(value, dict):
        return "the redacted answer is not a JSON object"
    if not schema:
        return None
    import jsonschema  # noqa: PLC0415 (the [llm] extra; only for json_schema answers)

    try:
        validator = jsonschema.validators.validator_for(schema)
        errors = sorted(validator(schema).iter_errors(value), key=lambda e: list(e.path))
    except jsonschema.exceptions.SchemaError as exc:  # the grammar accepted it: say so
        return f"the schema cannot be checked ({type(exc).__name__})"
    if errors:
        first = errors[0]
        at = "/".join(str(p) for p in first.absolute_path) or "(root)"
        return f"the redacted answer no longer satisfies the schema: {first.validator} at {at}"
    return None


def response_is_object(schema: Mapping[str, Any] | None) -> bool:
    """``json_object`` answers (no schema) must be objects, as OpenAI's JSON mode's are."""
    return schema is None


def refusal(reason: str) -> str:
    """The text a chat answer carries in ``message.refusal`` when its JSON was broken."""
    return (
        f"Patient identifiers were redacted from this answer, and then {reason}: it is not "
        "returned as valid JSON for the requested response_format."
    )

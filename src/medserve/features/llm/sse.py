"""Server-sent events as OpenAI streams them: ``data: <json>\\n\\n`` per chunk, then
``data: [DONE]\\n\\n``. An error after the stream started cannot change the status any more: it
is sent as one more event with OpenAI's error body, then the stream ends."""

from __future__ import annotations

from typing import Any

import orjson

MEDIA_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def event(data: dict[str, Any]) -> bytes:
    """One event carrying ``data`` as JSON (orjson never writes a newline inside it)."""
    return b"data: " + orjson.dumps(data) + b"\n\n"

"""A client that stops sending its body is not waited for: 408, for the prediction endpoints
and the other routes alike (MEDSERVE_BODY_TIMEOUT_S)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager

from medserve.core.settings import Settings
from medserve.faces.app import create_app


@pytest.mark.parametrize("path", ["/v1/models/any/predict", "/v1/outcomes"])
async def test_a_stalled_body_gets_408(tmp_path: Path, path: str) -> None:
    settings = Settings(home=tmp_path / "home", security=False, body_timeout_s=0.2)
    app = create_app(settings)
    stalled = asyncio.Event()  # never set: the rest of the body never comes
    messages = [{"type": "http.request", "body": b'{"outcomes": [', "more_body": True}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await stalled.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    async with LifespanManager(app) as manager:  # type: ignore[arg-type]
        await manager.app(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 408
    assert b"request_timeout" in sent[1]["body"]

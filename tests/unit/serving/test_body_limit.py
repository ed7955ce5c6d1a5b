"""BodyLimit's body timeout covers the request body only. A streamed answer (SSE after a POST, or
the console's chat as a streamed GET that reads no body) may outlast it: once the body is read, or
the response has started, the receive a stream's disconnect listener waits on is not timed out (it
was: every stream longer than MEDSERVE_BODY_TIMEOUT_S was cut off, with "response already started"
or an incomplete body). An answer that has not started still times the body out (408)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from starlette.exceptions import HTTPException

from medserve.serving.fast_path import BodyLimit


def _serve(app: Any, body: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs ``app`` behind a BodyLimit with a 0.01 s body timeout; the caller sends ``body``, then
    goes away after 0.1 s (ten times the timeout). Returns the messages the app sent."""
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        messages = list(body)
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(never.wait(), 0.1)
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)

        limited = BodyLimit(app, limit=1024, timeout_s=0.01)
        await limited({"type": "http", "headers": []}, receive, send)  # no 408 raised

    asyncio.run(run())
    return sent


def test_the_body_timeout_ends_with_the_body() -> None:
    received: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append((await receive())["type"])  # the request body
        received.append((await receive())["type"])  # what a stream's listener waits for

    _serve(app, [{"type": "http.request", "body": b"{}", "more_body": False}])
    assert received == ["http.request", "http.disconnect"]


def test_a_started_answer_waits_for_the_disconnect_without_a_timeout() -> None:
    received: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        received.append((await receive())["type"])  # the listener's first receive

    sent = _serve(app, [])
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert received == ["http.disconnect"]


def test_an_unstarted_answer_still_times_out_the_body() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    async def run() -> None:
        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()
            return {}

        async def send(message: Any) -> None:
            pass

        limited = BodyLimit(app, limit=1024, timeout_s=0.01)
        await limited({"type": "http", "headers": []}, receive, send)

    with pytest.raises(HTTPException) as raised:
        asyncio.run(run())
    assert raised.value.status_code == 408

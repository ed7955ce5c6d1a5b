"""An answer that starts without reading the request body (a streamed GET, such as the console's
chat) may outlast the body timeout: once the response has started, the disconnect listener's
receive is not timed out (it was, and the stream ended with "response already started")."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from starlette.exceptions import HTTPException

from medserve.serving.fast_path import BodyLimit


def test_a_started_answer_waits_for_the_disconnect_without_a_timeout() -> None:
    received: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        received.append((await receive())["type"])  # the listener's first receive

    async def run() -> None:
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            # the caller goes away after 0.1 s, ten times the body timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(never.wait(), 0.1)
            return {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: Any) -> None:
            sent.append(message)

        limited = BodyLimit(app, limit=1024, timeout_s=0.01)
        await limited({"type": "http", "headers": []}, receive, send)  # no 408 raised
        assert [m["type"] for m in sent] == ["http.response.start"]

    asyncio.run(run())
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

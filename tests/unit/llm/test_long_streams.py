"""A streamed answer may last longer than the body timeout: once the request body is read, the
receive that a stream's disconnect listener waits on is not timed out (it was: every SSE answer
longer than MEDSERVE_BODY_TIMEOUT_S, 30 s by default, was cut off with an incomplete body)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from medserve.serving.fast_path import BodyLimit


def test_the_body_timeout_ends_with_the_body() -> None:
    received: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = await receive()  # the request body
        received.append(body["type"])
        received.append((await receive())["type"])  # what a stream's listener waits for

    async def run() -> None:
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            # the caller goes away after 0.1 s: a stream ten times longer than the body timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(never.wait(), 0.1)
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            pass

        limited = BodyLimit(app, limit=1024, timeout_s=0.01)
        await limited({"type": "http", "headers": []}, receive, send)  # no 408 raised

    asyncio.run(run())
    assert received == ["http.request", "http.disconnect"]

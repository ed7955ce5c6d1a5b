"""The access log: one line per request with the route's template (never the raw path), the
status, the latency and medserve's request id (never a caller's id), as text or JSON lines."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from medserve.serving.access_log import AccessLog
from medserve.serving.fast_path import hot_path_of


def _api() -> FastAPI:
    api = FastAPI()

    @api.get("/v1/models/{name}")
    def model(name: str) -> dict[str, str]:
        return {"name": name}

    return api


class _HotFirst:
    """Like medserve's fast path: answers hot endpoints itself, passes the rest on."""

    def __init__(self, fallback: FastAPI) -> None:
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and hot_path_of(scope) is not None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"x-request-id", b"0193made-by-medserve")],
                }
            )
            await send({"type": "http.response.body", "body": b"{}"})
            return
        await self.fallback(scope, receive, send)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    yield read, write
    os.close(read)
    os.close(write)


async def _lines(log: AccessLog, read: int, *requests: tuple[str, str, dict[str, str]]) -> str:
    transport = httpx.ASGITransport(app=log)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for method, path, headers in requests:
            await client.request(method, path, headers=headers, content=b'{"secret": "Jane Roe"}')
    log.flush()
    return os.read(read, 65536).decode()


async def test_text_lines_name_the_route_template_never_the_path(pipe: tuple[int, int]) -> None:
    read, write = pipe
    log = AccessLog(_HotFirst(_api()), "text", fd=write)
    text = await _lines(
        log,
        read,
        ("GET", "/v1/models/jane-roe-mrn-123", {}),
        ("POST", "/v1/models/jane-roe-mrn-123/versions/3/predict", {}),
        ("POST", "/v2/models/jane-roe-mrn-123/infer", {"X-Request-ID": "MRN-4455"}),
        ("GET", "/nothing/jane-roe", {}),
    )
    lines = text.splitlines()
    assert len(lines) == 4
    assert " GET /v1/models/{name} 200 " in lines[0]
    assert " POST /v1/models/{name}/versions/{version}/predict 200 " in lines[1]
    assert lines[1].endswith("rid=0193made-by-medserve")
    assert " POST /v2/models/{name}/infer 200 " in lines[2]
    assert lines[2].endswith("rid=caller")  # a caller's own id is never logged
    assert " GET - 404 " in lines[3]
    for secret in ("jane", "MRN", "Jane Roe", "secret"):
        assert secret not in text


async def test_json_lines(pipe: tuple[int, int]) -> None:
    read, write = pipe
    log = AccessLog(_HotFirst(_api()), "json", fd=write)
    text = await _lines(log, read, ("POST", "/v2/models/m/infer", {}))
    [line] = text.splitlines()
    record = json.loads(line)
    assert record["method"] == "POST"
    assert record["route"] == "/v2/models/{name}/infer"
    assert record["status"] == 200
    assert record["request_id"] == "0193made-by-medserve"
    assert record["ms"] >= 0
    assert set(record) == {"time", "method", "route", "status", "ms", "request_id"}


async def test_lines_are_written_in_batches_not_one_write_per_request(
    pipe: tuple[int, int],
) -> None:
    read, write = pipe
    log = AccessLog(_HotFirst(_api()), "text", fd=write)
    transport = httpx.ASGITransport(app=log)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(5):
            await client.post("/v2/models/m/infer", content=b"{}")
    os.set_blocking(read, False)
    with pytest.raises(BlockingIOError):  # nothing written yet: one write per half second
        os.read(read, 65536)
    log.flush()
    assert os.read(read, 65536).decode().count("\n") == 5

"""Every error under /openai/ in OpenAI's shape, those answered before the routes included (the
security middleware's 401 and 429, the role check's 403, an unknown path's 404), so that the
official ``openai`` client raises its typed exceptions with ``code``, ``type`` and ``param``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from tests.unit.llm.conftest import CHAT
from tests.unit.serving.inprocess_app import create_key, serve

from medserve.serving.extensions.llm_errors import openai_body

openai = pytest.importorskip("openai")

MESSAGES = [{"role": "user", "content": "Hello"}]


def _client(http: Any, headers: dict[str, str] | None) -> Any:
    key = headers["Authorization"].removeprefix("Bearer ") if headers else "msk_nonsense"
    return openai.OpenAI(
        base_url="http://testserver/openai/v1", api_key=key, http_client=http, max_retries=0
    )


def _shape(error: Any) -> dict[str, Any]:
    body = error.body  # the client's parse of {"error": {...}}: the inner object
    assert set(body) >= {"message", "type", "param", "code"}, body
    return dict(body)


def test_refusals_before_the_route_have_openai_shape(llm_home: Path) -> None:
    with serve(llm_home, security=True) as (http, _):
        with pytest.raises(openai.AuthenticationError) as unknown:
            _client(http, None).chat.completions.create(model=CHAT, messages=MESSAGES)
        body = _shape(unknown.value)
        assert body["type"] == "authentication_error"
        assert unknown.value.response.headers["www-authenticate"].startswith("Bearer")

        auditor = create_key(llm_home, ["auditor"])  # no predict role: the route check's 403
        with pytest.raises(openai.PermissionDeniedError) as denied:
            _client(http, auditor).chat.completions.create(model=CHAT, messages=MESSAGES)
        assert _shape(denied.value)["type"] == "permission_error"

        limited = create_key(llm_home, ["app"], rate_limit=1)  # the guard's own request rate
        client = _client(http, limited)
        for _ in range(4):  # a second a request: a burst runs out
            with contextlib.suppress(openai.RateLimitError):
                client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=2)
        with pytest.raises(openai.RateLimitError) as slowed:
            client.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=2)
        body = _shape(slowed.value)
        assert body["type"] == "rate_limit_error"
        assert body["code"]
        assert int(slowed.value.response.headers["retry-after"]) >= 1

        app = create_key(llm_home, ["app"])
        with pytest.raises(openai.NotFoundError) as missing:
            _client(http, app).get("/no/such/thing", cast_to=object)
        assert _shape(missing.value)["type"] == "invalid_request_error"
        with pytest.raises(openai.BadRequestError) as bad:  # the route's own, unchanged
            _client(http, app).chat.completions.create(model=CHAT, messages=[])
        assert _shape(bad.value)["param"] == "messages"
        # other paths keep medserve's shape
        assert isinstance(http.get("/v1/models").json()["error"], str)


def test_bodies_of_every_shape_become_openai_s() -> None:
    import orjson

    medserve = orjson.dumps(
        {"error": "no", "code": "x_y", "details": [{"field": "model", "rule": "r"}]}
    )
    assert orjson.loads(openai_body(medserve, 400)) == {
        "error": {"message": "no", "type": "invalid_request_error", "param": "model", "code": "x_y"}
    }
    fastapi = orjson.dumps({"detail": [{"loc": ["query", "days"], "msg": "too big"}]})
    assert orjson.loads(openai_body(fastapi, 422))["error"]["param"] == "days"
    plain = openai_body(b"Not Found", 404)
    assert orjson.loads(plain)["error"]["code"] == "not_found"
    already = orjson.dumps({"error": {"message": "m", "type": "t", "param": None, "code": None}})
    assert openai_body(already, 429) == already

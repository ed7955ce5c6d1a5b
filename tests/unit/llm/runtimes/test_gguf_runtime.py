"""The ``gguf`` flavor on a real model: SmolLM2-135M-Instruct (Q4_1) run by llama.cpp."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from tests.unit.llm.runtimes.helpers import require

from medserve.core.errors import InvalidRequestError
from medserve.core.runtimes.base import Runtime
from medserve.core.runtimes.loader import load_runtime
from medserve.features.llm.gguf_runtime import GgufRuntime
from medserve.features.llm.protocol import Chunk, GenerationParams, GenerativeRuntime

QUESTION = [{"role": "user", "content": "Name three primary colours."}]
GREEDY = GenerationParams(max_tokens=24, temperature=0.0, seed=1)
# an object with a name and an age, nothing else: bounded so it always closes within max_tokens
PATIENT_GRAMMAR = r"""
root   ::= "{" ws "\"name\":" ws name "," ws "\"age\":" ws age ws "}"
name   ::= "\"" [A-Za-z] [a-z]{0,11} "\""
age    ::= [1-9] [0-9]?
ws     ::= [ ]?
"""


@pytest.fixture(scope="module")
def runtime(smollm2: Path) -> GgufRuntime:
    require("llama_cpp")
    loaded = load_runtime("gguf", smollm2)
    assert isinstance(loaded, GgufRuntime)
    return loaded


def _text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def test_it_is_a_runtime_and_a_generative_runtime(runtime: GgufRuntime) -> None:
    assert isinstance(runtime, Runtime)
    assert isinstance(runtime, GenerativeRuntime)
    meta = runtime.metadata()
    assert meta.task == "generation"
    assert meta.runtime == "llama.cpp"
    assert "llama-cpp-python" in meta.library_versions
    info = runtime.info()
    assert info.architecture == "llama"
    assert info.context_length == 8192 == runtime.context_length  # from the file
    assert info.quantization == "Q4_1"
    assert info.chat_template is not None
    assert "<|im_start|>" in info.chat_template
    with pytest.raises(InvalidRequestError, match="/openai/v1"):
        runtime.predict(np.zeros((1, 1), np.float32))


def test_greedy_chat_with_a_seed_is_deterministic(runtime: GgufRuntime) -> None:
    first = list(runtime.chat(QUESTION, GREEDY))
    second = list(runtime.chat(QUESTION, GREEDY))
    assert _text(first) == _text(second)
    assert _text(first).strip()
    last = first[-1]
    assert last.finish_reason in {"stop", "length"}
    assert last.text == ""
    assert all(c.finish_reason is None for c in first[:-1])
    assert last.prompt_tokens > runtime.count_tokens(QUESTION[0]["content"])  # + the template
    assert 0 < last.completion_tokens <= GREEDY.max_tokens
    # counts grow as text arrives
    counts = [c.completion_tokens for c in first]
    assert counts == sorted(counts)


def test_max_tokens_stops_with_length(runtime: GgufRuntime) -> None:
    chunks = list(runtime.chat(QUESTION, GenerationParams(max_tokens=3, temperature=0.0)))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 3
    long = list(runtime.chat(QUESTION, GenerationParams(max_tokens=12, temperature=0.0)))
    assert _text(long).startswith(_text(chunks))


def test_a_json_grammar_yields_parseable_json(runtime: GgufRuntime) -> None:
    messages = [{"role": "user", "content": "Describe a patient as JSON with name and age."}]
    params = GenerationParams(max_tokens=40, temperature=0.0, grammar=PATIENT_GRAMMAR)
    chunks = list(runtime.chat(messages, params))
    value = json.loads(_text(chunks))
    assert set(value) == {"name", "age"}
    assert isinstance(value["age"], int)
    assert chunks[-1].finish_reason == "stop"


def test_a_grammar_that_does_not_parse_is_refused_before_generation(
    runtime: GgufRuntime,
) -> None:
    with pytest.raises(InvalidRequestError, match="GBNF"):
        runtime.chat(QUESTION, GenerationParams(grammar='root ::= ( "a"'))
    # the model still answers afterwards
    assert _text(list(runtime.chat(QUESTION, GenerationParams(max_tokens=2, temperature=0))))


def test_count_tokens_and_plain_completion(runtime: GgufRuntime) -> None:
    assert runtime.count_tokens("") == 0
    short, longer = runtime.count_tokens("chest pain"), runtime.count_tokens("chest pain " * 10)
    assert 0 < short < longer
    prompt = "The heart has four"
    chunks = list(runtime.complete(prompt, GenerationParams(max_tokens=5, temperature=0.0)))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 5
    n = runtime.count_tokens(prompt)
    assert chunks[-1].prompt_tokens in {n, n + 1}  # + BOS where the model adds one
    assert _text(chunks)


def test_stop_sequences_end_the_answer(runtime: GgufRuntime) -> None:
    full = _text(list(runtime.chat(QUESTION, GenerationParams(max_tokens=24, temperature=0))))
    cut_at = next((w for w in full.split() if len(w) > 3), None)
    assert cut_at is not None, full  # temperature 0: the same answer every time
    chunks = list(
        runtime.chat(QUESTION, GenerationParams(max_tokens=24, temperature=0, stop=[cut_at]))
    )
    assert chunks[-1].finish_reason == "stop"
    assert cut_at not in _text(chunks)
    assert full.startswith(_text(chunks))


def test_concurrent_calls_take_turns_on_the_one_context(runtime: GgufRuntime) -> None:
    expected = _text(list(runtime.chat(QUESTION, GREEDY)))
    results: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(_text(list(runtime.chat(QUESTION, GREEDY))))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert results == [expected] * 3


def test_a_prompt_longer_than_the_context_is_refused(runtime: GgufRuntime) -> None:
    prompt = "chest pain " * 5000  # > 8192 tokens
    with pytest.raises(InvalidRequestError, match="context"):
        list(runtime.complete(prompt, GenerationParams(max_tokens=2)))

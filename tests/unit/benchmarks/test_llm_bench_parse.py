"""The chat benchmark's stream parsing and answer comparison (no server, no model)."""

from __future__ import annotations

import json

from benchmarks.embeddings import cosines
from benchmarks.llm import parse_sse, same_answer


def _event(content: str | None = None, finish: str | None = None, **extra: object) -> str:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return "data: " + json.dumps({"choices": [choice], **extra})


def test_parse_sse_joins_content_and_reads_finish_and_usage() -> None:
    lines = [
        _event(""),
        ": ping",
        _event("Hello"),
        _event(" there"),
        _event(None, "length"),
        "data: " + json.dumps({"choices": [], "usage": {"completion_tokens": 64}}),
        "data: [DONE]",
        _event("after done"),
    ]
    assert parse_sse(lines) == ("Hello there", "length", 64)


def test_parse_sse_without_usage() -> None:
    assert parse_sse([_event("a"), _event(None, "stop"), "data: [DONE]"]) == ("a", "stop", None)


def test_same_answer_lets_a_placeholder_stand_for_the_redacted_text() -> None:
    llama = "Invented by Sir Isaac Newton in 1687, it spread."
    assert same_answer("Invented by Sir [NAME] in 1687, it spread.", llama)
    assert same_answer(llama, llama)
    assert not same_answer("Invented by Sir [NAME] in 1690, it spread.", llama)


def test_cosines_row_by_row() -> None:
    assert cosines([[1.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [1.0, 0.0]]) == [1.0, 0.0]

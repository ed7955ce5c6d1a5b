"""What the OpenAI-compatible API needs of a model, whichever engine runs it.

A generative runtime is a ``core.runtimes.base.Runtime`` too (the registry, the model manager and
the gate treat it as any version: ``predict`` refuses tabular input with a clear error) that also
implements ``GenerativeRuntime``; an embedding runtime implements ``EmbeddingRuntime``. The API
layer finds them with ``isinstance`` on the loaded model's runtime, so a test can serve a recording
fake through the real pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationParams:
    """The sampling and stopping parameters of one call (OpenAI's names and meanings)."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None
    grammar: str | None = None  # a GBNF grammar the output must follow (response_format)
    # Who may reuse what this call leaves in the engine's cache (its prompt's KV prefix): the
    # API passes the caller's key, so a prefix cached for one key never serves, nor can be timed
    # by, another. None: start from an empty context.
    cache_key: str | None = None


@dataclass(frozen=True)
class Chunk:
    """A piece of generated text as it is produced; the last one has ``finish_reason`` and the
    final token counts (the others carry the counts so far)."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class GenerativeInfo:
    """Read from the GGUF file at registration and at load (``gguf`` metadata)."""

    architecture: str
    context_length: int
    chat_template: str | None = None
    quantization: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class GenerativeRuntime(Protocol):
    """A model that continues text. Both calls yield chunks as tokens are produced (the API
    streams them or joins them); they may block, so the API runs them in a worker thread."""

    def info(self) -> GenerativeInfo: ...

    def count_tokens(self, text: str) -> int: ...

    def chat(self, messages: Sequence[dict[str, str]], params: GenerationParams) -> Iterator[Chunk]:
        """``messages``: ``[{"role": "system"|"user"|"assistant", "content": str}]``, formatted
        with the model's chat template."""
        ...

    def complete(self, prompt: str, params: GenerationParams) -> Iterator[Chunk]: ...


@runtime_checkable
class EmbeddingRuntime(Protocol):
    """A model that maps texts to vectors (one row per text, L2-normalised where the model's
    recipe says so)."""

    def dimensions(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

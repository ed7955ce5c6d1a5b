"""The ``gguf`` runtime flavor: a GGUF language model run in process by llama.cpp.

One model copy per worker process: the weights are memory-mapped (shared between workers through
the page cache) and the context (KV cache for the file's full context length) is the worker's own.
SmolLM2-135M-Instruct Q4_1 measured here: loading it adds ~315 MB to a worker's resident memory
(the 98 MB weights, an 8192-token f16 KV cache of ~190 MB, llama.cpp's compute buffers), ~350 MB
in all with the interpreter; ~120 tokens/s decoding with 2 threads on this 2-core machine.

llama.cpp contexts are not re-entrant, and the API runs calls in worker threads, so each model has
a lock held for the whole of one generation (a second call waits for the first to finish).

The prompt prefix is reused *within one key*, never across keys. llama-cpp-python keeps the
previous call's tokens in the KV cache and re-reads only what differs from them (as
``llama_cpp.server`` does: ~56 ms saved on a repeated SmolLM2 chat prompt here). A call whose
``cache_key`` (the API key) differs from the previous call's, or that has none, starts from an
empty context instead: another key's prompt must neither shape an answer nor be detectable by
timing (a fast first token would say "someone sent this prefix"). Within a key, reuse changes
only which tokens are evaluated again, not the model's arithmetic on them; llama.cpp may batch
the re-read suffix differently, so a temperature-0 answer is reproducible per key and context
state, as with ``llama_cpp.server``, not bit-for-bit across servers.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from medserve.core.errors import InvalidRequestError, ModelLoadError
from medserve.core.extensions import FlavorOptions
from medserve.core.runtimes._common import versions
from medserve.core.runtimes.base import RuntimeMetadata, TensorSpec
from medserve.features.llm.gguf_metadata import info_from_metadata
from medserve.features.llm.protocol import (
    Chunk,
    FinishReason,
    GenerationParams,
    GenerativeInfo,
)

FLAVOR = "gguf"
THREADS_ENV = "MEDSERVE_LLM_THREADS"
INSTALL_HINT = (
    "the gguf flavor needs llama-cpp-python: pip install 'medserve[llm]' "
    "(scripts/llm-wheel.sh builds it once into a wheel cache)"
)


def llm_threads() -> int:
    """Threads for one generation: ``MEDSERVE_LLM_THREADS``, else up to 2 (decoding a small
    model is memory-bound: more threads than that buy little and starve the other workers)."""
    raw = os.environ.get(THREADS_ENV)
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise InvalidRequestError(f"{THREADS_ENV}={raw!r}: expected a positive integer")
        return value
    return max(1, min(2, os.cpu_count() or 1))


class GgufRuntime:
    """``Runtime`` (for the registry and the model manager) and ``GenerativeRuntime`` (for the
    OpenAI-compatible API) over one ``llama_cpp.Llama``."""

    flavor = FLAVOR

    def __init__(self, path: Path, *, n_threads: int | None = None, n_ctx: int = 0) -> None:
        try:
            import llama_cpp  # noqa: PLC0415 (optional extra: llm)
        except ImportError as exc:
            raise ModelLoadError(INSTALL_HINT) from exc
        self._lib = llama_cpp
        threads = n_threads or llm_threads()
        try:
            # n_ctx=0: the context length the file declares
            self._llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"llama.cpp could not load the GGUF model: {exc}") from exc
        self._info = info_from_metadata(self._llm.metadata)
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._lock = threading.Lock()
        self._cache_owner: str | None = None  # the key whose prompt the KV cache holds
        # Token accounting: llama-cpp-python's stream carries no usage, so the sampler is wrapped
        # to see every sampled token and the position it was sampled at (one call at a time,
        # under the lock, so these per-call fields are safe).
        self._sampled: list[int] = []
        self._prompt_tokens = 0
        sample = self._llm.sample

        def counting_sample(*args: Any, **kwargs: Any) -> int:
            token = int(sample(*args, **kwargs))
            if not self._sampled:
                # the first token is sampled from the logits of the prompt's last position
                idx = kwargs.get("idx")
                self._prompt_tokens = int(idx) + 1 if idx is not None else self._llm.n_tokens
            self._sampled.append(token)
            return token

        setattr(self._llm, "sample", counting_sample)  # noqa: B010 (mypy: no method assignment)
        self._metadata = RuntimeMetadata(
            runtime="llama.cpp",
            task="generation",
            n_features=1,
            outputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
            library_versions=versions("llama-cpp-python"),
        )

    @classmethod
    def from_path(cls, path: Path, *, n_threads: int | None = None) -> GgufRuntime:
        return cls(path, n_threads=n_threads)

    # -- Runtime --------------------------------------------------------------------------------
    def metadata(self) -> RuntimeMetadata:
        return self._metadata

    def predict(self, X: npt.NDArray[Any]) -> dict[str, np.ndarray]:
        raise InvalidRequestError(
            "this is a generative model: call it through the OpenAI-compatible API "
            "(POST /openai/v1/chat/completions or /openai/v1/completions), not predict/infer"
        )

    # -- GenerativeRuntime ----------------------------------------------------------------------
    def info(self) -> GenerativeInfo:
        return self._info

    @property
    def context_length(self) -> int:
        """The context this runtime allocated (tokens of prompt plus completion)."""
        return int(self._llm.n_ctx())

    def count_tokens(self, text: str) -> int:
        # tokenizing reads the vocabulary only (no context): no lock needed
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def chat(self, messages: Sequence[dict[str, str]], params: GenerationParams) -> Iterator[Chunk]:
        turns: list[Any] = [
            {"role": str(m["role"]), "content": str(m["content"])} for m in messages
        ]
        kwargs = self._sampling(params)  # a bad grammar is refused before anything starts
        return self._generate(
            lambda: self._llm.create_chat_completion(messages=turns, stream=True, **kwargs),
            lambda choice: choice.get("delta", {}).get("content"),
            params.cache_key,
        )

    def complete(self, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
        kwargs = self._sampling(params)
        return self._generate(
            lambda: self._llm.create_completion(prompt=prompt, stream=True, **kwargs),
            lambda choice: choice.get("text"),
            params.cache_key,
        )

    # -- internals ------------------------------------------------------------------------------
    def _sampling(self, params: GenerationParams) -> dict[str, Any]:
        """llama-cpp-python keyword arguments with OpenAI's meanings: only temperature and top_p
        shape the distribution (llama.cpp's own top_k 40 and min_p 0.05 are turned off);
        no seed means a fresh random one (llama-cpp-python would otherwise repeat its own)."""
        if params.max_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1")
        if params.temperature < 0 or not 0 < params.top_p <= 1:
            raise InvalidRequestError("temperature must be >= 0 and top_p in (0, 1]")
        return {
            "max_tokens": int(params.max_tokens),
            "temperature": float(params.temperature),
            "top_p": float(params.top_p),
            "top_k": 0,
            "min_p": 0.0,
            "stop": [str(s) for s in params.stop] or None,
            "seed": params.seed if params.seed is not None else secrets.randbits(31),
            "grammar": self._grammar(params.grammar) if params.grammar else None,
        }

    def _grammar(self, text: str) -> Any:
        """A ``LlamaGrammar``, checked first: llama.cpp answers a grammar it cannot parse with a
        NULL sampler, which llama-cpp-python would put in the sampler chain (a crash)."""
        checked = self._lib.llama_sampler_init_grammar(self._vocab, text.encode("utf-8"), b"root")
        if not checked:
            raise InvalidRequestError("the grammar does not parse as GBNF (or has no 'root' rule)")
        self._lib.llama_sampler_free(checked)
        from llama_cpp.llama_grammar import LlamaGrammar  # noqa: PLC0415 (optional extra: llm)

        return LlamaGrammar.from_string(text, verbose=False)

    def _generate(
        self,
        start: Callable[[], Any],
        text_of: Callable[[dict[str, Any]], str | None],
        cache_key: str | None,
    ) -> Iterator[Chunk]:
        with self._lock:
            self._sampled = []
            self._prompt_tokens = 0
            if cache_key is None or cache_key != self._cache_owner:
                # another key's (or no key's) prefix: start from an empty context (module doc)
                self._llm.reset()  # type: ignore[no-untyped-call]
            self._cache_owner = cache_key
            finish: FinishReason = "stop"
            try:
                stream: Iterator[dict[str, Any]] = start()
                for part in stream:
                    choice = part["choices"][0]
                    text = text_of(choice)
                    if choice.get("finish_reason") == "length":
                        finish = "length"
                    if text:
                        yield Chunk(text, None, self._prompt_tokens, self._completion_tokens())
            except ValueError as exc:
                # llama-cpp-python's own refusals (a prompt longer than the context), which name
                # token counts only, never the prompt
                raise InvalidRequestError(f"the model refused the request: {exc}") from exc
            yield Chunk("", finish, self._prompt_tokens, self._completion_tokens())

    def _completion_tokens(self) -> int:
        """Sampled tokens, less a final end-of-generation token (it is not part of the text)."""
        count = len(self._sampled)
        if count and self._lib.llama_vocab_is_eog(self._vocab, self._sampled[-1]):
            count -= 1
        return count


def load_gguf(path: Path, options: FlavorOptions) -> GgufRuntime:
    """The ``gguf`` flavor's loader (``Extension.runtime_flavors``); ``options`` carries nothing
    llama.cpp uses: its threads come from ``MEDSERVE_LLM_THREADS`` (see :func:`llm_threads`)."""
    return GgufRuntime.from_path(path)

"""The ``gguf-embedding`` runtime flavor: a GGUF model run by llama.cpp in embedding mode.

A GGUF file is served for embeddings when it was registered so: by its metadata (an encoder
that declares ``{arch}.pooling_type``, as BERT-family embedding GGUFs do) or explicitly
(``medserve models register NAME model.gguf --task embeddings``), which also serves a decoder
such as SmolLM2 as a (mean-pooled) embedder. llama.cpp pools the last hidden states per text
(the file's pooling type, else the mean) and the vectors are L2-normalised, as OpenAI's are.

The context is the file's, capped at :data:`MAX_CONTEXT` tokens (an embedding call needs no
room to generate, and the KV cache is sized by it); a longer text is truncated to it, and its
tokens are counted before truncation (what the caller sent). Like the generative runtime, one
llama.cpp context per model and a lock around each call (contexts are not re-entrant).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from medserve.core.errors import InvalidRequestError, ModelLoadError
from medserve.core.extensions import FlavorOptions
from medserve.core.runtimes._common import versions
from medserve.core.runtimes.base import RuntimeMetadata, TensorSpec
from medserve.features.llm.gguf_runtime import INSTALL_HINT, llm_threads

FLAVOR: Final = "gguf-embedding"
MAX_CONTEXT: Final = 2048


class GgufEmbeddingRuntime:
    """``Runtime`` and ``EmbeddingRuntime`` over one ``llama_cpp.Llama(embedding=True)``."""

    flavor = FLAVOR

    def __init__(self, path: Path, *, n_threads: int | None = None) -> None:
        try:
            import llama_cpp  # noqa: PLC0415 (optional extra: llm)
        except ImportError as exc:
            raise ModelLoadError(INSTALL_HINT) from exc
        threads = n_threads or llm_threads()
        try:
            architecture, declared, file_context = _header(llama_cpp, path)
            context = min(file_context, MAX_CONTEXT)
            pooling = (
                llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED  # the file's own (CLS, mean, last...)
                if declared is not None and declared > 0
                else llama_cpp.LLAMA_POOLING_TYPE_MEAN
            )
            # n_batch = n_ubatch = the context: a text is one batch (encoders need that)
            self._llm: Any = llama_cpp.Llama(
                model_path=str(path),
                embedding=True,
                pooling_type=pooling,
                n_ctx=context,
                n_batch=context,
                n_ubatch=context,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"llama.cpp could not load the GGUF model: {exc}") from exc
        self.architecture = architecture
        self.pooling = "file" if pooling == llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED else "mean"
        self._dimensions = int(self._llm.n_embd())
        self._lock = threading.Lock()
        self._metadata = RuntimeMetadata(
            runtime="llama.cpp",
            task="embedding",
            n_features=1,
            outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, self._dimensions])],
            library_versions=versions("llama-cpp-python"),
        )

    # -- Runtime --------------------------------------------------------------------------------
    def metadata(self) -> RuntimeMetadata:
        return self._metadata

    def predict(self, X: npt.NDArray[Any]) -> dict[str, np.ndarray]:
        raise InvalidRequestError(
            "this is an embedding model: call it through the OpenAI-compatible API "
            "(POST /openai/v1/embeddings), not predict/infer"
        )

    # -- EmbeddingRuntime -----------------------------------------------------------------------
    def dimensions(self) -> int:
        return self._dimensions

    def count_tokens(self, text: str) -> int:
        # the vocabulary only (no context): no lock needed
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length float32 row per text, in order (truncated to the context)."""
        if not texts:
            return np.zeros((0, self._dimensions), np.float32)
        with self._lock:
            try:
                rows = self._llm.embed(list(texts), normalize=True, truncate=True)
            except ValueError as exc:  # llama-cpp-python's own refusals name sizes only
                raise InvalidRequestError(f"the model refused the input: {exc}") from exc
        out = np.asarray(rows, dtype=np.float32)
        if out.shape != (len(texts), self._dimensions):
            raise ModelLoadError(
                f"llama.cpp gave embeddings of shape {out.shape}, expected one pooled "
                f"{self._dimensions}-dimensional vector per text"
            )
        return out


def _header(lib: Any, path: Path) -> tuple[str, int | None, int]:
    """Architecture, declared pooling type and context length, read by llama.cpp from the
    file's header alone (``vocab_only``: no tensors, no context)."""
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ValueError("not a readable GGUF model")
    try:
        buffer = ctypes.create_string_buffer(256)

        def value(key: str) -> str | None:
            size = lib.llama_model_meta_val_str(model, key.encode(), buffer, len(buffer))
            return buffer.value.decode("utf-8", "replace") if size >= 0 else None

        architecture = value("general.architecture") or ""
        pooling = value(f"{architecture}.pooling_type")
        context = value(f"{architecture}.context_length")
    finally:
        lib.llama_model_free(model)
    if not architecture or context is None or not context.isdigit() or int(context) < 1:
        raise ValueError("the GGUF header names no architecture or context length")
    return architecture, int(pooling) if pooling and pooling.isdigit() else None, int(context)


def load_gguf_embeddings(path: Path, options: FlavorOptions) -> GgufEmbeddingRuntime:
    """The ``gguf-embedding`` flavor's loader (``Extension.runtime_flavors``)."""
    return GgufEmbeddingRuntime(path)

"""The runtime flavors of foundation models, for the llm extension's ``runtime_flavors()``.

Importing this module is cheap: each loader imports llama.cpp, onnxruntime or tokenizers only
when a version of its flavor loads.
"""

from __future__ import annotations

from typing import Final

from medserve.core.extensions import FlavorLoader
from medserve.features.llm.embedding_runtime import FLAVOR as EMBEDDING_FLAVOR
from medserve.features.llm.embedding_runtime import load_minilm_embeddings
from medserve.features.llm.gguf_embedding import FLAVOR as GGUF_EMBEDDING_FLAVOR
from medserve.features.llm.gguf_embedding import load_gguf_embeddings
from medserve.features.llm.gguf_runtime import FLAVOR as GGUF_FLAVOR
from medserve.features.llm.gguf_runtime import load_gguf
from medserve.features.llm.upstream_flavor import FLAVOR as UPSTREAM_FLAVOR
from medserve.features.llm.upstream_flavor import load_upstream

RUNTIME_FLAVORS: Final[dict[str, FlavorLoader]] = {
    GGUF_FLAVOR: load_gguf,
    GGUF_EMBEDDING_FLAVOR: load_gguf_embeddings,
    EMBEDDING_FLAVOR: load_minilm_embeddings,
    UPSTREAM_FLAVOR: load_upstream,
}

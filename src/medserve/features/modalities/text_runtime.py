"""Runtime for clinical-text classifiers: ``tokenizers`` + a transformer encoder in onnxruntime +
a linear head. No torch at serve time.

The artifact is a bundle: ``encoder.onnx`` (input ids/mask -> sentence embedding),
``tokenizer.json`` and ``head.json`` (logistic-regression weights on the embedding). The
explanation is word occlusion: each word (all of its word pieces) is masked out of attention in
one batched run, and its attribution is how much the explained class's probability falls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from pydantic import BaseModel

from medserve.core.errors import ModelLoadError, ValidationFailedError
from medserve.core.runtimes._common import classifier_outputs, versions
from medserve.core.runtimes.base import RuntimeMetadata
from medserve.core.runtimes.onnx_runtime import session_options
from medserve.features.modalities.bundle import read_bundle
from medserve.features.modalities.held_warnings import errors_without_input


class TextSpec(BaseModel):
    text_field: str = "text"
    max_length: int = 256
    class_labels: list[str]
    positive_label: str | None = None
    encoder: str = "sentence-transformers/all-MiniLM-L6-v2"


class LinearHead(BaseModel):
    """Multinomial (k > 2 rows) or binary (1 row: the last class's log-odds) logistic head."""

    coef: list[list[float]]
    intercept: list[float]

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        logits = embeddings @ np.asarray(self.coef, np.float32).T + np.asarray(
            self.intercept, np.float32
        )
        if logits.shape[1] == 1:
            p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1.0 - p, p], axis=1).astype(np.float32)
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        out: np.ndarray = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        return out


class TextRuntime:
    flavor = "text"

    def __init__(
        self,
        encoder: bytes,
        tokenizer_json: bytes,
        head: LinearHead,
        spec: TextSpec,
        *,
        intra_op_threads: int = 1,
    ) -> None:
        from tokenizers import Tokenizer  # noqa: PLC0415 (optional extra: tokenizers)

        opts = session_options(intra_op_threads)
        opts.log_severity_level = 3  # shape-merge notices from the hand-built graph are noise
        try:
            self._session = ort.InferenceSession(
                encoder, sess_options=opts, providers=["CPUExecutionProvider"]
            )
            self._tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        except Exception as exc:
            raise ModelLoadError(f"could not load the text model: {exc}") from exc
        self._tokenizer.enable_truncation(spec.max_length)
        self._tokenizer.no_padding()
        self.spec = spec
        self.head = head
        labels = list(spec.class_labels)
        self._labels = np.array(labels, dtype=object)
        self._metadata = RuntimeMetadata(
            runtime="onnxruntime",
            task="classification",
            n_features=1,
            class_labels=labels,
            outputs=classifier_outputs(labels, len(labels)),
            library_versions=versions("onnxruntime", "tokenizers"),
        )

    @classmethod
    def from_path(cls, path: Path, *, intra_op_threads: int = 1) -> TextRuntime:
        bundle = read_bundle(path, "text")
        return cls(
            bundle.member("encoder.onnx"),
            bundle.member("tokenizer.json"),
            LinearHead.model_validate(bundle.json_member("head.json")),
            TextSpec.model_validate(bundle.spec),
            intra_op_threads=intra_op_threads,
        )

    def metadata(self) -> RuntimeMetadata:
        return self._metadata

    # -- prediction ---------------------------------------------------------------------------
    def _encode(self, ids: list[list[int]], masks: list[list[int]]) -> np.ndarray:
        length = max(len(row) for row in ids)
        id_arr = np.zeros((len(ids), length), np.int64)
        mask_arr = np.zeros((len(ids), length), np.int64)
        for i, (row, mask) in enumerate(zip(ids, masks, strict=True)):
            id_arr[i, : len(row)] = row
            mask_arr[i, : len(mask)] = mask
        (emb,) = self._session.run(None, {"input_ids": id_arr, "attention_mask": mask_arr})
        return np.asarray(emb, np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        return self._encode([e.ids for e in encodings], [e.attention_mask for e in encodings])

    def predict(self, X: npt.NDArray[Any]) -> dict[str, np.ndarray]:
        texts = [_as_text(v, i, self.spec.text_field) for i, v in enumerate(X[:, 0])]
        with errors_without_input("the text model"):
            probabilities = self.head.probabilities(self.embed(texts))
        return {
            "label": self._labels[probabilities.argmax(axis=1)],
            "probabilities": probabilities,
        }

    # -- explanation ---------------------------------------------------------------------------
    def explain(self, X: npt.NDArray[Any]) -> list[dict[str, Any]]:
        """One word-occlusion explanation per row (the optional Runtime ``explain``)."""
        return [
            self.explain_text(_as_text(v, i, self.spec.text_field)) for i, v in enumerate(X[:, 0])
        ]

    def explain_text(self, text: str, target_label: str | None = None) -> dict[str, Any]:
        """Word-occlusion attributions: ``[{"word", "start", "end", "attribution"}]``. An error
        on the way names its type only, never the note (``errors_without_input``)."""
        with errors_without_input("the text explanation"):
            return self._explain_text(text, target_label)

    def _explain_text(self, text: str, target_label: str | None) -> dict[str, Any]:
        encoding = self._tokenizer.encode(text)
        ids, mask = list(encoding.ids), list(encoding.attention_mask)
        words: dict[int, list[int]] = {}
        for position, word in enumerate(encoding.word_ids):
            if word is not None:
                words.setdefault(word, []).append(position)
        labels = list(self.spec.class_labels)
        base = self.head.probabilities(self._encode([ids], [mask]))[0]
        label = target_label or self.spec.positive_label
        target = labels.index(label) if label in labels else int(base.argmax())
        order = sorted(words)
        variants = []
        for word in order:
            occluded = list(mask)
            for position in words[word]:
                occluded[position] = 0
            variants.append(occluded)
        attributions: list[dict[str, Any]] = []
        if variants:
            probs = self.head.probabilities(self._encode([ids] * len(variants), variants))
            for word, p in zip(order, probs[:, target], strict=True):
                start = encoding.offsets[words[word][0]][0]
                end = encoding.offsets[words[word][-1]][1]
                attributions.append(
                    {
                        "word": text[start:end],
                        "start": start,
                        "end": end,
                        "attribution": round(float(base[target] - p), 5),
                    }
                )
        return {"method": "word_occlusion", "target": labels[target], "tokens": attributions}


def _as_text(value: Any, row: int, field: str) -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise ValidationFailedError(
        f"row {row}: {field!r} must be non-empty text",
        details=[{"row": row, "field": field, "rule": "type", "message": "non-empty text"}],
    )

"""DNA sequences as tabular features: canonical k-mer counts feeding any tabular model.

The featuriser's parameters (k, canonical, normalisation) are declared in the bundle with the
inner model, so serving computes exactly the features training did. ``canonical`` folds each
k-mer with its reverse complement (a motif counts the same on either strand). The alphabet is
A/C/G/T/N (case-insensitive, soft-masked lower case accepted); anything else is refused with the
row and the 1-based position of the first bad character -- never the sequence itself.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from medserve.core.errors import ValidationFailedError
from medserve.core.runtimes.base import Runtime, RuntimeMetadata
from medserve.features.modalities.bundle import read_bundle

ALPHABET: Final = "ACGTN"
_COMPLEMENT: Final = str.maketrans("ACGTN", "TGCAN")
_VALID: Final = frozenset(ALPHABET)


class KmerSpec(BaseModel):
    k: int = Field(ge=1, le=8)
    canonical: bool = True
    normalize: bool = True  # frequencies (counts / valid k-mers) rather than raw counts
    sequence_field: str = "sequence"
    min_length: int = 1
    max_length: int = 1_000_000


def reverse_complement(sequence: str) -> str:
    return sequence.translate(_COMPLEMENT)[::-1]


def kmer_vocabulary(k: int, canonical: bool) -> list[str]:
    kmers = ("".join(p) for p in itertools.product("ACGT", repeat=k))
    if not canonical:
        return list(kmers)
    return sorted({min(kmer, reverse_complement(kmer)) for kmer in kmers})


def validate_sequence(value: Any, row: int, spec: KmerSpec) -> str:
    field = spec.sequence_field
    if not isinstance(value, str):
        raise _invalid(row, field, "type", f"row {row}: {field!r} must be a string of bases")
    sequence = value.strip().upper()
    for position, base in enumerate(sequence, start=1):
        if base not in _VALID:
            shown = base if base.isprintable() and base.isascii() else "a non-ASCII character"
            raise _invalid(
                row,
                field,
                "alphabet",
                f"row {row}: {field!r} has {shown!r} at position {position}; "
                "allowed: A, C, G, T, N",
                position=position,
            )
    if not spec.min_length <= len(sequence) <= spec.max_length:
        raise _invalid(
            row,
            field,
            "length",
            f"row {row}: {field!r} has {len(sequence)} bases; "
            f"allowed {spec.min_length} to {spec.max_length}",
        )
    return sequence


def _invalid(row: int, field: str, rule: str, message: str, **extra: Any) -> ValidationFailedError:
    return ValidationFailedError(
        message, details=[{"row": row, "field": field, "rule": rule, "message": message, **extra}]
    )


class KmerFeaturizer:
    def __init__(self, spec: KmerSpec) -> None:
        self.spec = spec
        self.vocabulary = kmer_vocabulary(spec.k, spec.canonical)
        self._index = {kmer: i for i, kmer in enumerate(self.vocabulary)}
        if spec.canonical:
            for kmer in list(self._index):
                self._index[reverse_complement(kmer)] = self._index[kmer]

    @property
    def feature_names(self) -> list[str]:
        return [f"kmer_{kmer}" for kmer in self.vocabulary]

    def transform(self, sequences: list[str]) -> np.ndarray:
        """Validated sequences -> (n, vocabulary) float32; k-mers containing N are skipped."""
        k, index = self.spec.k, self._index
        X = np.zeros((len(sequences), len(self.vocabulary)), np.float32)
        for row, raw in enumerate(sequences):
            sequence = validate_sequence(raw, row, self.spec)
            counts = X[row]
            for start in range(len(sequence) - k + 1):
                column = index.get(sequence[start : start + k])
                if column is not None:
                    counts[column] += 1
            total = counts.sum()
            if self.spec.normalize and total > 0:
                counts /= total
        return X


class SequenceRuntime:
    """Featurise, then hand the matrix to the inner tabular runtime (ONNX or skops)."""

    flavor = "sequence"

    def __init__(self, spec: KmerSpec, inner: Runtime) -> None:
        self.spec = spec
        self.featurizer = KmerFeaturizer(spec)
        self.inner = inner
        inner_meta = inner.metadata()
        if inner_meta.n_features not in (0, len(self.featurizer.vocabulary)):
            raise ValidationFailedError(
                f"the inner model expects {inner_meta.n_features} features; k={spec.k} gives "
                f"{len(self.featurizer.vocabulary)}"
            )
        self._metadata = RuntimeMetadata(
            runtime=f"kmer+{inner_meta.runtime}",
            task=inner_meta.task,
            n_features=1,
            class_labels=inner_meta.class_labels,
            outputs=inner_meta.outputs,
            library_versions=inner_meta.library_versions,
        )

    @classmethod
    def from_path(cls, path: Path, *, intra_op_threads: int = 1) -> SequenceRuntime:
        bundle = read_bundle(path, "sequence")
        spec = KmerSpec.model_validate(bundle.spec)
        if "inner.onnx" in bundle.members:
            # lazy import (onnxruntime only when an ONNX version loads)
            from medserve.core.runtimes.onnx_runtime import OnnxRuntime  # noqa: PLC0415

            inner: Runtime = OnnxRuntime(
                bundle.member("inner.onnx"), intra_op_threads=intra_op_threads
            )
        else:
            # lazy import (pulls scikit-learn and skops)
            from medserve.core.runtimes.skops_runtime import SkopsRuntime  # noqa: PLC0415

            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / "inner.skops"
                target.write_bytes(bundle.member("inner.skops"))
                inner = SkopsRuntime.from_path(target, trust=False)
        return cls(spec, inner)

    def metadata(self) -> RuntimeMetadata:
        return self._metadata

    def predict(self, X: npt.NDArray[Any]) -> dict[str, np.ndarray]:
        return self.inner.predict(self.featurizer.transform(list(X[:, 0])))

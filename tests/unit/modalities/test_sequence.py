"""k-mer featuriser, alphabet validation and the sequence runtime through the registry."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from medserve.core.errors import ValidationFailedError
from medserve.core.loaded_model import load_version_locally
from medserve.core.registry.service import Registry
from medserve.features.modalities.register import register_sequence_model
from medserve.features.modalities.sequence import KmerFeaturizer, KmerSpec, reverse_complement
from medserve.features.modalities.sequence_demo_data import MOTIF, sequences


def test_canonical_vocabulary_size_and_strand_invariance() -> None:
    # 4^k / 2 + palindromes (4^(k/2) / 2) for even k
    assert len(KmerFeaturizer(KmerSpec(k=4)).vocabulary) == 136
    assert len(KmerFeaturizer(KmerSpec(k=6)).vocabulary) == 2080
    assert len(KmerFeaturizer(KmerSpec(k=3, canonical=False)).vocabulary) == 64
    featurizer = KmerFeaturizer(KmerSpec(k=5))
    seq = "ACGTTGCAAGGCTTAACCGT"
    np.testing.assert_array_equal(
        featurizer.transform([seq]), featurizer.transform([reverse_complement(seq)])
    )


def test_counts_skip_kmers_with_n_and_accept_soft_masked_lower_case() -> None:
    featurizer = KmerFeaturizer(KmerSpec(k=2, canonical=False, normalize=False))
    X = featurizer.transform(["acNgt"])
    names = featurizer.feature_names
    counts = {names[i]: X[0, i] for i in np.flatnonzero(X[0])}
    assert counts == {"kmer_AC": 1.0, "kmer_GT": 1.0}


def test_alphabet_error_names_row_and_position_but_not_the_sequence() -> None:
    featurizer = KmerFeaturizer(KmerSpec(k=3))
    with pytest.raises(ValidationFailedError) as caught:
        featurizer.transform(["ACGT", "ACGTACGUAC"])
    detail = caught.value.details[0]
    assert (detail["row"], detail["field"], detail["rule"], detail["position"]) == (
        1,
        "sequence",
        "alphabet",
        8,
    )
    assert "'U' at position 8" in caught.value.message
    assert "ACGTACGUAC" not in caught.value.message


def test_planted_motif_model_registered_and_served_locally(registry: Registry) -> None:
    spec = KmerSpec(k=6)
    texts, labels = sequences(400)
    estimator = LogisticRegression(C=10.0, max_iter=2000).fit(
        KmerFeaturizer(spec).transform(texts), labels
    )
    version = register_sequence_model(registry, "motif", estimator, spec, texts[:50])
    assert version.flavor == "sequence"
    assert version.runtime == "kmer+onnxruntime"  # the inner model was verified as ONNX
    loaded = load_version_locally(registry, version)
    held_out, truth = sequences(200, seed=99)
    result = loaded.predict_records([{"sequence": s} for s in held_out])
    predicted = [p["label"] for p in result["predictions"]]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    assert accuracy > 0.9
    background = "A" * 40 + "C" * 40
    on_minus_strand = "A" * 40 + reverse_complement(MOTIF) + "C" * 40
    both = loaded.predict_records([{"sequence": background}, {"sequence": on_minus_strand}])
    p_motif = [p["probabilities"]["motif"] for p in both["predictions"]]
    assert p_motif[1] > p_motif[0]

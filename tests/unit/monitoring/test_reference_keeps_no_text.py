"""The drift reference keeps summaries of what a model takes, never the values of free text: a
note in the registration sample may name anyone (categorical values are kept: they are declared)."""

from __future__ import annotations

import numpy as np

from medserve.core.registry.signature import FeatureSpec, Signature
from medserve.features.monitoring.reference import build_reference


def test_free_text_values_never_reach_the_reference() -> None:
    signature = Signature(
        inputs=[
            FeatureSpec(name="age", type="float"),
            FeatureSpec(name="ward", type="string", categories=["a", "b"]),
            FeatureSpec(name="note", type="string"),
        ]
    )
    X = np.array(
        [[61.0, "a", "Seen by Dr Quillfeather, lives in Kittery"], [45.0, "b", "no complaints"]],
        dtype=object,
    )
    reference = build_reference(signature, X, None, None)
    assert set(reference["features"]) == {"age", "ward"}
    assert "Quillfeather" not in str(reference)
    assert reference["features"]["ward"]["frequencies"] == {"a": 0.5, "b": 0.5}

"""Combiner maths and spec validation for ensembles (no registry needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medserve.core.errors import InvalidRequestError
from medserve.features.composition.ensemble import (
    LOGIT_EPS,
    EnsembleSpec,
    PinnedMember,
    combine_logistic,
    combine_weighted_mean,
    logit,
    member_keys,
    sigmoid,
)


def test_weighted_mean_of_probabilities_and_each_share() -> None:
    a = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    b = np.array([[0.5, 0.5], [0.4, 0.6]], dtype=np.float32)
    combined, (share_a, share_b) = combine_weighted_mean([a, b], [3.0, 1.0])
    expected = (3 * a.astype(np.float64) + b.astype(np.float64)) / 4
    np.testing.assert_allclose(combined, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(share_a, 0.75 * a.astype(np.float64), atol=1e-12)
    np.testing.assert_allclose(share_b, 0.25 * b.astype(np.float64), atol=1e-12)
    np.testing.assert_allclose(share_a + share_b, combined, atol=1e-12)
    np.testing.assert_allclose(combined.sum(axis=1), 1.0, atol=1e-7)  # still a distribution


def test_weighted_mean_of_regression_values() -> None:
    combined, shares = combine_weighted_mean(
        [np.array([10.0, 20.0]), np.array([0.0, 40.0])], [1, 1]
    )
    assert combined.tolist() == [5.0, 30.0]
    assert [s.tolist() for s in shares] == [[5.0, 10.0], [0.0, 20.0]]


def test_logistic_stacking_by_hand() -> None:
    p1, p2 = np.array([0.8, 0.3]), np.array([0.6, 0.1])
    p, (c1, c2) = combine_logistic([p1, p2], [1.5, -0.5], 0.25)
    for i in range(2):
        z = 0.25 + 1.5 * math.log(p1[i] / (1 - p1[i])) - 0.5 * math.log(p2[i] / (1 - p2[i]))
        assert p[i] == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-12)
        assert c1[i] == pytest.approx(1.5 * math.log(p1[i] / (1 - p1[i])), abs=1e-12)
    np.testing.assert_allclose(0.25 + c1 + c2, logit(p), atol=1e-9)


def test_logit_is_clipped_so_certain_members_stay_finite() -> None:
    values = logit(np.array([0.0, 1.0]))
    assert np.isfinite(values).all()
    assert values[1] == pytest.approx(math.log((1 - LOGIT_EPS) / LOGIT_EPS))
    assert sigmoid(np.array([-1000.0, 1000.0])).tolist() == [0.0, 1.0]  # no overflow warning


def test_spec_defaults_and_errors() -> None:
    spec = EnsembleSpec.parse({"members": [{"model": "a"}, {"model": "b", "version": 3}]})
    assert spec.combiner == "weighted_mean"
    assert [m.version for m in spec.members] == ["production", 3]
    assert [m.weight for m in spec.members] == [1.0, 1.0]
    with pytest.raises(InvalidRequestError, match=r"members\[1\] \(b\).*must be > 0"):
        EnsembleSpec.parse({"members": [{"model": "a"}, {"model": "b", "weight": 0}]})
    with pytest.raises(InvalidRequestError, match="members"):
        EnsembleSpec.parse({"members": [{"model": "a"}]})
    with pytest.raises(InvalidRequestError, match="combiner"):
        EnsembleSpec.parse({"members": [{"model": "a"}, {"model": "b"}], "combiner": "max"})
    with pytest.raises(InvalidRequestError, match="intercept is only used by the logistic"):
        EnsembleSpec.parse({"members": [{"model": "a"}, {"model": "b"}], "intercept": 1})
    with pytest.raises(InvalidRequestError, match="threshold"):
        EnsembleSpec.parse({"members": [{"model": "a"}, {"model": "b"}], "threshold": 1.5})
    # a logistic coefficient may be negative
    stacked = EnsembleSpec.parse(
        {"members": [{"model": "a", "weight": -1}, {"model": "b"}], "combiner": "logistic"}
    )
    assert stacked.members[0].weight == -1


def test_member_keys_stay_unique_when_a_model_appears_twice() -> None:
    def pinned(model: str, version: int) -> PinnedMember:
        return PinnedMember(
            model=model,
            version=version,
            weight=1,
            artifact_sha256="0" * 64,
            flavor="onnx",
            signature={"inputs": []},
        )

    members = [pinned("risk", 1), pinned("risk", 2), pinned("note", 1)]
    assert member_keys(members) == ["risk.v1", "risk.v2", "note"]

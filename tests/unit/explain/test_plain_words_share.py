"""A linear model's probability points are each feature's share of the change from the mean
patient, and the plain words say so (not "the effect of this value")."""

from __future__ import annotations

import numpy as np

from medserve.features.explain.explainers import Explanation
from medserve.features.explain.service import plain_words


def _explanation(points: np.ndarray | None, output: str) -> Explanation:
    attributions = np.array([[0.8, -0.3, 0.1]])
    return Explanation(
        method="linear_exact" if points is not None else "tree_shap",
        output=output,
        target="malignant",
        base=np.array([0.0]),
        attributions=attributions,
        prediction=attributions.sum(1),
        points=points,
    )


def test_linear_points_are_called_a_share_of_the_change_from_the_mean_patient() -> None:
    points = np.array([[0.172, -0.061, 0.020]])
    words = plain_words(
        _explanation(points, "log_odds"), 0, ["a", "b", "c"], [1.5, 2, 3], [None] * 3
    )
    assert words[0].startswith("a 1.5 raised the probability of malignant by 17.2 points")
    assert "share of the +13.1-point change from the mean patient" in words[0]
    assert "not the effect of this value alone" in words[0]
    assert "lowered the probability of malignant by 6.1 points" in words[1]


def test_other_explanations_keep_their_words() -> None:
    words = plain_words(
        _explanation(None, "probability"), 0, ["a", "b", "c"], [1, 2, 3], [None] * 3
    )
    assert words[0] == "a 1 raised the probability of malignant by 80.0 points"

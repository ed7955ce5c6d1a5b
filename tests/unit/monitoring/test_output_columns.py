"""How the outputs of the requests in one logged batch become columns: one value per row, and
``null`` rows (never shifted values) where a request lacks an output or gave the wrong length."""

from __future__ import annotations

import numpy as np
import orjson

from medserve.core.prediction_log import dumps, output_columns


def _json(columns: dict[str, object]) -> object:
    return orjson.loads(dumps(columns))


def test_every_request_has_every_output_row_by_row() -> None:
    outputs = [
        {"label": np.array([1]), "probabilities": np.array([[0.25, 0.75]], dtype=np.float32)},
        {"label": np.array([0, 1]), "probabilities": np.array([[0.9, 0.1], [0.5, 0.5]])},
    ]
    assert _json(output_columns(outputs, [1, 2])) == {
        "label": [1, 0, 1],
        "probabilities": [[0.25, 0.75], [0.9, 0.1], [0.5, 0.5]],
    }


def test_missing_or_misshapen_outputs_are_null_for_their_rows_only() -> None:
    outputs = [
        {"label": np.array([1]), "score": np.array([0.5])},
        {"label": np.array([0, 0])},  # no score
        {"label": np.array([1]), "score": np.array([0.1, 0.2])},  # two scores for one row
        {"label": np.array(1), "score": np.array([0.3])},  # a 0-d label
    ]
    columns = _json(output_columns(outputs, [1, 2, 1, 1]))
    assert columns == {
        "label": [1, 0, 0, 1, None],
        "score": [0.5, None, None, None, 0.3],
    }


def test_an_output_only_a_later_request_has_is_kept() -> None:
    outputs = [{"label": np.array(["benign"])}, {"label": np.array(["malignant"]), "x": [7]}]
    assert _json(output_columns(outputs, [1, 1])) == {
        "label": ["benign", "malignant"],
        "x": [None, 7],
    }

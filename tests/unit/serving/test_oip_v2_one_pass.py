"""Per-feature v2 tensors are parsed in one pass (one array over all their data) when they take
the common form, with the same matrix and the same refusals as the general path."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from medserve.core.errors import ValidationFailedError
from medserve.core.loaded_model import LoadedModel, load_version
from medserve.core.registry.service import Registry
from medserve.core.registry.signature import infer_signature
from medserve.serving.protocols import oip_v2


@pytest.fixture
def model(registry: Registry) -> LoadedModel:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(200, 4)), columns=["a", "b", "c", "d"])
    y = (frame.a + frame.b > 0).astype(int)
    estimator = LogisticRegression().fit(frame, y)
    version = registry.register(
        "m", estimator, sample=frame, signature=infer_signature(frame, range_margin=1.0)
    )
    return load_version(registry.artifacts, version)


def _tensors(rows: np.ndarray, names: list[str], **extra: Any) -> list[dict[str, Any]]:
    return [
        {"name": name, "shape": [len(rows)], "datatype": "FP32", "data": rows[:, j].tolist()}
        | extra
        for j, name in enumerate(names)
    ]


def test_the_one_pass_gives_the_general_paths_matrix(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = np.array([[0.1, -0.2, 0.3, 0.0], [1.0, 0.5, -0.5, 0.25]])
    names = ["d", "b", "a", "c"]  # any order: placed by name
    body = {"inputs": _tensors(rows[:, [3, 1, 0, 2]], names)}
    fast = oip_v2.parse_infer_request(model, body)
    assert oip_v2._float_columns(model, body["inputs"]) is not None  # it took the one pass
    monkeypatch.setattr(oip_v2, "_float_columns", lambda *_: None)
    general = oip_v2.parse_infer_request(model, body)
    assert fast.dtype == general.dtype == np.float32
    np.testing.assert_array_equal(fast, general)
    np.testing.assert_array_equal(fast, rows.astype(np.float32))


def test_other_forms_and_bad_values_take_the_general_path(model: LoadedModel) -> None:
    rows = np.array([[0.1, -0.2, 0.3, 0.0]])
    names = ["a", "b", "c", "d"]
    int_typed = _tensors(rows, names)
    int_typed[0] = {**int_typed[0], "datatype": "INT64", "data": [0]}
    nested = _tensors(rows, names)
    nested[1] = {**nested[1], "shape": [1, 1], "data": [[-0.2]]}
    for inputs in (int_typed, nested, _tensors(rows, names)[:3]):
        assert oip_v2._float_columns(model, inputs) is None
    out_of_range = _tensors(np.array([[1e6, 0.0, 0.0, 0.0]]), names)
    assert oip_v2._float_columns(model, out_of_range) is None
    with pytest.raises(ValidationFailedError) as caught:
        oip_v2.parse_infer_request(model, {"inputs": out_of_range})
    assert caught.value.details[0]["field"] == "a"
    assert caught.value.details[0]["rule"] == "maximum"

"""Property tests: only ValidationFailedError is ever raised, and valid rows round-trip."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medserve.core.errors import ValidationFailedError
from medserve.core.registry.signature import FeatureSpec, Signature

RULES = {
    "required",
    "type",
    "minimum",
    "maximum",
    "category",
    "not_nan",
    "unknown_field",
    "not_object",
    "empty",
    "shape",
}
NAMES = ["age", "sbp", "sex", "smoker", "ward", "score"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def feature_specs(draw: st.DrawFn, name: str) -> FeatureSpec:
    ftype = draw(st.sampled_from(["float", "integer", "boolean", "string"]))
    spec = FeatureSpec(name=name, type=ftype, identifier=draw(st.booleans()))
    if ftype in ("float", "integer"):
        if draw(st.booleans()):
            low = draw(st.integers(min_value=-1000, max_value=1000))
            spec.minimum = float(low)
            spec.maximum = float(low + draw(st.integers(min_value=0, max_value=1000)))
        if draw(st.booleans()):
            spec.missing = "impute"
            spec.impute_value = spec.minimum if spec.minimum is not None else 0
    elif ftype == "boolean":
        if draw(st.booleans()):
            spec.missing = "impute"
            spec.impute_value = draw(st.booleans())
    else:
        if draw(st.booleans()):
            spec.categories = draw(
                st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=6, unique=True)
            )
        if draw(st.booleans()):
            spec.missing = "impute"
            spec.impute_value = spec.categories[0] if spec.categories else "unknown"
    spec.required = draw(st.booleans())
    return spec


@st.composite
def signatures(draw: st.DrawFn) -> Signature:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=len(NAMES), unique=True))
    return Signature(inputs=[draw(feature_specs(name)) for name in names])


def rows_for(names: list[str]) -> st.SearchStrategy[Any]:
    keys = st.sampled_from([*names, "extra"]) | st.text(max_size=4)
    return st.dictionaries(keys, json_values, max_size=len(names) + 2) | json_values


def assert_well_formed(error: ValidationFailedError, n_rows: int) -> None:
    assert error.details
    assert error.code == "validation_failed"
    for problem in error.details:
        assert set(problem) == {"row", "field", "rule", "message"}
        assert problem["rule"] in RULES
        assert problem["row"] is None or 0 <= problem["row"] < n_rows
        assert isinstance(problem["message"], str)
        assert problem["message"]


@settings(max_examples=300, deadline=None)
@given(data=st.data(), sig=signatures())
def test_records_never_raise_anything_else(data: st.DataObject, sig: Signature) -> None:
    rows = data.draw(st.lists(rows_for(sig.feature_names), max_size=4))
    try:
        matrix = sig.validator().records_to_matrix(rows)
    except ValidationFailedError as error:
        assert_well_formed(error, len(rows))
    else:
        assert matrix.shape == (len(rows), len(sig.inputs))
        assert matrix.dtype == (np.float32 if sig.all_numeric else object)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), sig=signatures())
def test_columns_never_raise_anything_else(data: st.DataObject, sig: Signature) -> None:
    keys = st.sampled_from([*sig.feature_names, "extra"])
    columns = data.draw(
        st.dictionaries(keys, st.lists(json_values, max_size=3) | json_values, max_size=7)
    )
    try:
        matrix = sig.validator().columns_to_matrix(columns)
    except ValidationFailedError as error:
        assert_well_formed(error, 3)
    else:
        assert matrix.shape[1] == len(sig.inputs)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), sig=signatures())
def test_check_matrix_never_raises_anything_else(data: st.DataObject, sig: Signature) -> None:
    n_cols = data.draw(st.sampled_from([len(sig.inputs), len(sig.inputs) + 1]))
    dtype = data.draw(st.sampled_from([np.float64, np.float32, np.int64, np.bool_]))
    array = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=2, max_dims=2, max_side=4)))
    array = array[:, :n_cols] if array.shape[1] >= n_cols else array
    try:
        matrix = sig.validator().check_matrix(array)
    except ValidationFailedError as error:
        assert_well_formed(error, array.shape[0])
    else:
        assert matrix.shape == (array.shape[0], len(sig.inputs))


def valid_values(spec: FeatureSpec) -> st.SearchStrategy[Any]:
    if spec.type == "boolean":
        return st.booleans()
    if spec.type == "string":
        return st.sampled_from(spec.categories) if spec.categories else st.text(max_size=6)
    low = spec.minimum if spec.minimum is not None else -1e30
    high = spec.maximum if spec.maximum is not None else 1e30
    if spec.type == "integer":
        return st.integers(min_value=math.ceil(low), max_value=math.floor(high))
    return st.floats(min_value=low, max_value=high) | st.integers(
        min_value=math.ceil(low), max_value=math.floor(high)
    )


@settings(max_examples=300, deadline=None)
@given(data=st.data(), sig=signatures())
def test_valid_rows_round_trip(data: st.DataObject, sig: Signature) -> None:
    rows = data.draw(
        st.lists(
            st.fixed_dictionaries({spec.name: valid_values(spec) for spec in sig.inputs}),
            min_size=1,
            max_size=4,
        )
    )
    validator = sig.validator()
    matrix = validator.records_to_matrix(rows)
    # a float feature holds floats: an integer sent for it is converted (2**53 + 1 rounds)
    floats = {spec.name for spec in sig.inputs if spec.type == "float"}
    expected = [
        [float(row[name]) if name in floats else row[name] for name in sig.feature_names]
        for row in rows
    ]
    if sig.all_numeric:
        assert matrix.dtype == np.float32
        np.testing.assert_array_equal(matrix, np.array(expected, dtype=np.float32))
    else:
        assert matrix.dtype == object
        assert matrix.tolist() == expected
    columns = {name: [row[name] for row in rows] for name in sig.feature_names}
    np.testing.assert_array_equal(validator.columns_to_matrix(columns), matrix)

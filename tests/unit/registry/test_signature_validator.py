"""The compiled validator: every rule, every row, the missing-value policy, and PHI safety."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from medserve.core.errors import ValidationFailedError
from medserve.core.registry.signature import (
    MAX_DETAILS,
    FeatureSpec,
    Signature,
    infer_signature,
)


@pytest.fixture(scope="module")
def cancer() -> pd.DataFrame:
    return load_breast_cancer(as_frame=True).data


@pytest.fixture(scope="module")
def cancer_sig(cancer: pd.DataFrame) -> Signature:
    return infer_signature(cancer, range_margin=0.5)


@pytest.fixture
def clinical() -> Signature:
    return Signature(
        inputs=[
            FeatureSpec(name="age", type="integer", minimum=0, maximum=120),
            FeatureSpec(name="sbp", type="float", minimum=50.0, maximum=250.0),
            FeatureSpec(name="smoker", type="boolean"),
            FeatureSpec(name="sex", type="string", categories=["F", "M"]),
            FeatureSpec(name="bmi", type="float", missing="impute", impute_value=26.5),
            FeatureSpec(name="mrn", type="string", identifier=True),
        ]
    )


@pytest.fixture
def numeric() -> Signature:
    return Signature(
        inputs=[
            FeatureSpec(name="age", type="integer", minimum=0, maximum=120),
            FeatureSpec(name="sbp", type="float", minimum=50.0, maximum=250.0),
            FeatureSpec(name="smoker", type="boolean"),
            FeatureSpec(name="bmi", type="float", missing="impute", impute_value=26.5),
        ]
    )


def good_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "age": 54,
        "sbp": 132.5,
        "smoker": False,
        "sex": "F",
        "bmi": 24.0,
        "mrn": "MRN-0042",
    }
    row.update(changes)
    return row


def numeric_row(**changes: Any) -> dict[str, Any]:
    row = good_row(**changes)
    del row["sex"], row["mrn"]
    return row


def problems_of(call: Any, *args: Any) -> tuple[ValidationFailedError, list[dict[str, Any]]]:
    with pytest.raises(ValidationFailedError) as info:
        call(*args)
    return info.value, info.value.details


def only(details: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(details) == 1, details
    return details[0]


# -- conversion --------------------------------------------------------------------------------


def test_real_rows_become_the_float32_matrix(cancer: pd.DataFrame, cancer_sig: Signature) -> None:
    rows = cancer.head(25).to_dict(orient="records")
    matrix = cancer_sig.validator().records_to_matrix(rows)
    assert matrix.dtype == np.float32
    assert matrix.shape == (25, 30)
    np.testing.assert_array_equal(matrix, cancer.head(25).to_numpy(dtype=np.float32))


def test_mixed_signature_gives_object_matrix_keeping_strings(clinical: Signature) -> None:
    matrix = clinical.validator().records_to_matrix([good_row(), good_row(sex="M", age=70.0)])
    assert matrix.dtype == object
    assert matrix.shape == (2, 6)
    assert list(matrix[0]) == [54, 132.5, False, "F", 24.0, "MRN-0042"]
    assert matrix[1, 0] == 70
    assert isinstance(matrix[1, 0], int)  # an integral float for an integer field becomes an int
    assert matrix[1, 3] == "M"


def test_numpy_scalars_are_accepted(numeric: Signature) -> None:
    row = {"age": np.int64(40), "sbp": np.float32(120.0), "smoker": np.bool_(True), "bmi": 30.0}
    matrix = numeric.validator().records_to_matrix([row])
    np.testing.assert_array_equal(matrix, np.array([[40, 120, 1, 30]], dtype=np.float32))


# -- each rule ---------------------------------------------------------------------------------


def test_missing_field_is_required(clinical: Signature) -> None:
    row = good_row()
    del row["sbp"]
    error, details = problems_of(clinical.validator().records_to_matrix, [row])
    assert only(details) == {
        "row": 0,
        "field": "sbp",
        "rule": "required",
        "message": "this field is required",
    }
    assert error.code == "validation_failed"
    assert error.message == "1 problem in 1 row: row 0 field 'sbp': this field is required"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("sbp", "120", "expected a number, got a string"),  # numeric strings are not accepted
        ("sbp", True, "expected a number, got true/false (booleans are not numbers here)"),
        ("age", 54.5, "expected an integer, got a number with a fractional part"),
        ("age", [54], "expected an integer, got an array"),
        ("smoker", "yes", "expected true or false, got a string"),
        ("smoker", 2, "expected true or false, got a number"),
        ("sex", 1, "expected a string, got a number"),
        ("sbp", {"value": 1}, "expected a number, got an object"),
    ],
)
def test_wrong_type(clinical: Signature, field: str, value: Any, expected: str) -> None:
    _, details = problems_of(clinical.validator().records_to_matrix, [good_row(**{field: value})])
    assert only(details) == {"row": 0, "field": field, "rule": "type", "message": expected}


def test_boolean_accepts_zero_and_one(numeric: Signature) -> None:
    matrix = numeric.validator().records_to_matrix([numeric_row(smoker=1), numeric_row(smoker=0.0)])
    assert matrix[:, 2].tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("value", "rule", "message"),
    [
        (812.0, "maximum", "value 812.0 is above the maximum 250.0"),
        (12, "minimum", "value 12 is below the minimum 50.0"),
    ],
)
def test_out_of_range_both_sides(
    clinical: Signature, value: float, rule: str, message: str
) -> None:
    _, details = problems_of(clinical.validator().records_to_matrix, [good_row(sbp=value)])
    assert only(details) == {"row": 0, "field": "sbp", "rule": rule, "message": message}


def test_range_bounds_are_inclusive(numeric: Signature) -> None:
    matrix = numeric.validator().records_to_matrix(
        [numeric_row(sbp=50.0, age=120), numeric_row(sbp=250)]
    )
    assert matrix[:, 1].tolist() == [50.0, 250.0]


def test_unknown_category_lists_allowed_values_without_echoing(clinical: Signature) -> None:
    _, details = problems_of(clinical.validator().records_to_matrix, [good_row(sex="Female")])
    problem = only(details)
    assert problem["rule"] == "category"
    assert problem["field"] == "sex"
    assert problem["message"] == "not one of the allowed categories ('F', 'M')"
    assert "Female" not in problem["message"]


def test_category_message_shows_at_most_five() -> None:
    levels = [f"ward-{i}" for i in range(12)]
    sig = Signature(inputs=[FeatureSpec(name="ward", type="string", categories=levels)])
    _, details = problems_of(sig.validator().records_to_matrix, [{"ward": "roof"}])
    message = only(details)["message"]
    assert "'ward-4'" in message
    assert "'ward-5'" not in message
    assert "12 in all" in message


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf])
def test_missing_value_where_policy_rejects(clinical: Signature, value: Any) -> None:
    _, details = problems_of(clinical.validator().records_to_matrix, [good_row(sbp=value)])
    assert only(details) == {
        "row": 0,
        "field": "sbp",
        "rule": "not_nan",
        "message": "missing values are not allowed for this field",
    }


def test_unknown_field(clinical: Signature) -> None:
    _, details = problems_of(clinical.validator().records_to_matrix, [good_row(heart_rate=80)])
    assert only(details) == {
        "row": 0,
        "field": "heart_rate",
        "rule": "unknown_field",
        "message": "this field is not an input of the model",
    }


def test_unknown_field_found_even_when_a_field_is_missing(numeric: Signature) -> None:
    row = {"age": 50, "sbp": 120.0, "smoker": True, "bmi_typo": 22.0}  # same count as inputs
    details = problems_of(numeric.validator().records_to_matrix, [row])[1]
    assert only(details)["rule"] == "unknown_field"  # bmi itself is imputed


def test_row_that_is_not_an_object(clinical: Signature) -> None:
    _, details = problems_of(clinical.validator().records_to_matrix, [good_row(), [1, 2, 3]])
    assert only(details) == {
        "row": 1,
        "field": None,
        "rule": "not_object",
        "message": "the row is an array, not an object",
    }


def test_no_rows_is_empty(clinical: Signature) -> None:
    error, details = problems_of(clinical.validator().records_to_matrix, [])
    assert only(details) == {
        "row": None,
        "field": None,
        "rule": "empty",
        "message": "the request holds no rows",
    }
    assert error.message == "1 problem: request: the request holds no rows"


def test_every_problem_in_every_row_is_reported(clinical: Signature) -> None:
    rows = [
        good_row(age=130),
        good_row(),
        good_row(sbp="high", sex="matrix"),
        "not a row",
        good_row(extra=1, smoker=None),
    ]
    error, details = problems_of(clinical.validator().records_to_matrix, rows)
    found = [(p["row"], p["field"], p["rule"]) for p in details]
    assert found == [
        (0, "age", "maximum"),
        (2, "sbp", "type"),
        (2, "sex", "category"),
        (3, None, "not_object"),
        (4, "smoker", "not_nan"),
        (4, "extra", "unknown_field"),
    ]
    assert error.message.startswith("6 problems in 4 rows: row 0 field 'age': value 130 is above")
    assert error.message.endswith("and 1 more")


# -- missing-value policy ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["absent", None, math.nan, math.inf])
def test_impute_policy_fills_the_stated_value(numeric: Signature, value: Any) -> None:
    row = {"age": 60, "sbp": 140.0, "smoker": True}
    if value != "absent":
        row["bmi"] = value
    matrix = numeric.validator().records_to_matrix([row])
    assert matrix[0].tolist() == [60.0, 140.0, 1.0, 26.5]


def test_optional_field_passes_missing_through_as_nan() -> None:
    sig = Signature(inputs=[FeatureSpec(name="a"), FeatureSpec(name="b", required=False)])
    matrix = sig.validator().records_to_matrix(
        [{"a": 1.0}, {"a": 2.0, "b": None}, {"a": 3, "b": 4}]
    )
    assert matrix[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert math.isnan(matrix[0, 1])
    assert math.isnan(matrix[1, 1])
    assert matrix[2, 1] == 4.0


def test_inferred_impute_values_are_used_end_to_end() -> None:
    sample = pd.DataFrame({"bmi": [20.0, np.nan, 30.0, 25.0], "sex": ["F", None, "F", "M"]})
    sig = infer_signature(sample)
    matrix = sig.validator().records_to_matrix([{"bmi": None, "sex": None}, {"sex": "M"}])
    assert matrix.tolist() == [[25.0, "F"], [25.0, "M"]]


# -- PHI safety --------------------------------------------------------------------------------


def test_identifier_values_are_never_echoed() -> None:
    sig = Signature(
        inputs=[
            FeatureSpec(name="mrn", type="string", identifier=True, categories=["A-1", "B-2"]),
            FeatureSpec(name="patient_no", type="integer", identifier=True, maximum=9999),
        ]
    )
    rows = [
        {"mrn": "Z-987654", "patient_no": 123456},
        {"mrn": 555123, "patient_no": "Jane Doe"},
    ]
    error, details = problems_of(sig.validator().records_to_matrix, rows)
    assert [p["rule"] for p in details] == ["category", "maximum", "type", "type"]
    text = error.message + repr(details) + repr(error.to_dict())
    for secret in ("Z-987654", "123456", "555123", "Jane Doe", "A-1", "B-2"):
        assert secret not in text
    assert details[1]["message"] == "value is above the maximum 9999.0"


def test_string_values_are_not_echoed_for_ordinary_fields(clinical: Signature) -> None:
    error, details = problems_of(
        clinical.validator().records_to_matrix, [good_row(sbp="Smith, John")]
    )
    assert "Smith" not in error.message
    assert "Smith" not in repr(details)


# -- columns and matrices ----------------------------------------------------------------------


def test_columns_to_matrix_matches_records(cancer: pd.DataFrame, cancer_sig: Signature) -> None:
    head = cancer.head(10)
    validator = cancer_sig.validator()
    expected = validator.records_to_matrix(head.to_dict(orient="records"))
    as_arrays = {name: head[name].to_numpy() for name in head.columns}
    as_lists = {name: head[name].tolist() for name in head.columns}
    np.testing.assert_array_equal(validator.columns_to_matrix(as_arrays), expected)
    np.testing.assert_array_equal(validator.columns_to_matrix(as_lists), expected)
    assert validator.columns_to_matrix(as_arrays).dtype == np.float32


def test_columns_report_the_same_rules(numeric: Signature) -> None:
    validator = numeric.validator()
    columns = {
        "age": np.array([30.0, 40.5, 200.0]),
        "sbp": np.array([np.nan, 120.0, 10.0]),
        "smoker": np.array([1, 0, 3]),
        "colour": np.array([1, 2, 3]),
    }
    _, details = problems_of(validator.columns_to_matrix, columns)
    found = sorted(
        ((p["row"] if p["row"] is not None else -1), p["field"], p["rule"]) for p in details
    )
    assert found == [
        (-1, "colour", "unknown_field"),
        (0, "sbp", "not_nan"),
        (1, "age", "type"),
        (2, "age", "maximum"),
        (2, "sbp", "minimum"),
        (2, "smoker", "type"),
    ]


def test_columns_missing_feature_is_required_or_imputed(numeric: Signature) -> None:
    validator = numeric.validator()
    columns = {"age": [30, 40], "sbp": [120.0, 130.0], "smoker": [True, False]}
    matrix = validator.columns_to_matrix(columns)
    assert matrix[:, 3].tolist() == [26.5, 26.5]
    del columns["sbp"]
    _, details = problems_of(validator.columns_to_matrix, columns)
    assert only(details) == {
        "row": None,
        "field": "sbp",
        "rule": "required",
        "message": "no values were sent for this field",
    }


def test_columns_length_mismatch_is_shape(numeric: Signature) -> None:
    columns = {"age": [30, 40], "sbp": [120.0], "smoker": [True, False], "bmi": [1.0, 2.0]}
    _, details = problems_of(numeric.validator().columns_to_matrix, columns)
    problem = only(details)
    assert (problem["row"], problem["field"], problem["rule"]) == (None, "sbp", "shape")
    assert problem["message"] == "has 1 values but the first column has 2"


def test_columns_empty(numeric: Signature) -> None:
    _, details = problems_of(numeric.validator().columns_to_matrix, {})
    assert only(details)["rule"] == "empty"
    _, details = problems_of(
        numeric.validator().columns_to_matrix, {n: [] for n in numeric.feature_names}
    )
    assert only(details)["rule"] == "empty"


def test_columns_with_strings(clinical: Signature) -> None:
    validator = clinical.validator()
    columns: dict[str, Any] = {
        "age": np.array([30, 40]),
        "sbp": np.array([120.0, 130.0]),
        "smoker": np.array([True, False]),
        "sex": np.array(["F", "M"], dtype=object),
        "mrn": ["a", "b"],
    }
    matrix = validator.columns_to_matrix(columns)
    assert matrix.dtype == object
    assert matrix.tolist() == [
        [30, 120.0, True, "F", 26.5, "a"],
        [40, 130.0, False, "M", 26.5, "b"],
    ]
    assert type(matrix[0, 0]) is int
    assert type(matrix[0, 2]) is bool


def test_check_matrix_passes_valid_batches(cancer: pd.DataFrame, cancer_sig: Signature) -> None:
    matrix = cancer.to_numpy()
    out = cancer_sig.validator().check_matrix(matrix)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, matrix.astype(np.float32))


def test_check_matrix_reports_every_problem(cancer: pd.DataFrame, cancer_sig: Signature) -> None:
    matrix = cancer.head(5).to_numpy().copy()
    radius_max = cancer_sig.inputs[0].maximum
    assert radius_max is not None
    matrix[1, 0] = radius_max + 1
    matrix[3, 2] = np.nan
    matrix[4, 5] = -1.0
    _, details = problems_of(cancer_sig.validator().check_matrix, matrix)
    found = sorted((p["row"], p["field"], p["rule"]) for p in details)
    names = cancer_sig.feature_names
    assert found == [(1, names[0], "maximum"), (3, names[2], "not_nan"), (4, names[5], "minimum")]


def test_check_matrix_imputes_in_a_copy(numeric: Signature) -> None:
    matrix = np.array([[50, 120.0, 1, np.nan], [60, 130.0, 0, 31.0]])
    out = numeric.validator().check_matrix(matrix)
    assert out.tolist() == [[50.0, 120.0, 1.0, 26.5], [60.0, 130.0, 0.0, 31.0]]
    assert math.isnan(matrix[0, 3])  # the caller's array is untouched


def test_check_matrix_integer_and_boolean_columns(numeric: Signature) -> None:
    matrix = np.array([[50.5, 120.0, 0.5, 20.0]])
    _, details = problems_of(numeric.validator().check_matrix, matrix)
    assert [(p["field"], p["rule"]) for p in details] == [("age", "type"), ("smoker", "type")]


def test_check_matrix_shape_and_empty(numeric: Signature) -> None:
    validator = numeric.validator()
    _, details = problems_of(validator.check_matrix, np.zeros((2, 3)))
    assert only(details)["rule"] == "shape"
    assert "[n, 4]" in only(details)["message"]
    _, details = problems_of(validator.check_matrix, np.zeros((0, 4)))
    assert only(details)["rule"] == "empty"


def test_check_matrix_beyond_float32_is_refused() -> None:
    sig = Signature(inputs=[FeatureSpec(name="a")])
    _, details = problems_of(sig.validator().check_matrix, np.array([[1e300]]))
    assert only(details)["rule"] == "maximum"
    _, details = problems_of(sig.validator().records_to_matrix, [{"a": -(10**400)}])
    assert only(details)["rule"] == "minimum"


def test_check_matrix_with_strings_uses_object_columns(clinical: Signature) -> None:
    matrix = np.array([[54, 132.5, False, "F", None, "id"]], dtype=object)
    out = clinical.validator().check_matrix(matrix)
    assert out.tolist() == [[54, 132.5, False, "F", 26.5, "id"]]
    matrix[0, 3] = "Q"
    _, details = problems_of(clinical.validator().check_matrix, matrix)
    assert only(details)["rule"] == "category"


def test_the_problems_listed_are_capped_and_all_counted() -> None:
    validator = Signature(inputs=[FeatureSpec(name="age", type="float", maximum=120)]).validator()
    with pytest.raises(ValidationFailedError) as caught:
        validator.records_to_matrix([{"age": 500.0}] * 5000)
    assert len(caught.value.details) == MAX_DETAILS
    assert caught.value.message.startswith("5000 problems in 5000 rows")

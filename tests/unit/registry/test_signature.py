"""Signature inference from real samples, the constructors, and the JSON round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes

from medserve.core.errors import InvalidRequestError
from medserve.core.registry.signature import (
    FeatureSpec,
    Signature,
    infer_signature,
    signature_from_feature_names,
    signature_from_mlflow,
)


@pytest.fixture(scope="module")
def breast_cancer() -> pd.DataFrame:
    return load_breast_cancer(as_frame=True).data


@pytest.fixture(scope="module")
def diabetes() -> pd.DataFrame:
    return load_diabetes(as_frame=True).data


@pytest.fixture
def mixed() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [34, 51, 67, 45, 29],
            "sex": ["F", "M", "F", "F", None],
            "smoker": [True, False, False, True, False],
            "bmi": [22.5, np.nan, 31.0, 27.5, np.nan],
            "ward": pd.Categorical(["icu", "er", "icu", "gen", "er"]),
        }
    )


def test_breast_cancer_is_all_float_required_and_rejecting(breast_cancer: pd.DataFrame) -> None:
    sig = infer_signature(breast_cancer)
    assert sig.feature_names == list(breast_cancer.columns)
    assert len(sig.inputs) == 30
    for spec in sig.inputs:
        assert spec.type == "float"
        assert spec.required is True
        assert spec.missing == "reject"
        assert spec.minimum is None
        assert spec.maximum is None
        assert spec.categories is None
    assert sig.all_numeric is True


def test_range_margin_widens_observed_range(diabetes: pd.DataFrame) -> None:
    sig = infer_signature(diabetes, range_margin=0.1)
    age = next(s for s in sig.inputs if s.name == "age")
    low, high = float(diabetes["age"].min()), float(diabetes["age"].max())
    width = high - low
    assert low < 0  # diabetes features are centred, so the margin may go below zero
    assert age.minimum == pytest.approx(low - 0.1 * width)
    assert age.maximum == pytest.approx(high + 0.1 * width)


def test_range_margin_never_goes_below_zero_for_non_negative_columns(
    breast_cancer: pd.DataFrame,
) -> None:
    sig = infer_signature(breast_cancer, range_margin=10.0)
    radius = next(s for s in sig.inputs if s.name == "mean radius")
    observed_high = float(breast_cancer["mean radius"].max())
    observed_low = float(breast_cancer["mean radius"].min())
    assert radius.minimum == 0.0
    assert radius.maximum == pytest.approx(observed_high + 10.0 * (observed_high - observed_low))


def test_negative_range_margin_is_refused(diabetes: pd.DataFrame) -> None:
    with pytest.raises(InvalidRequestError, match="range_margin"):
        infer_signature(diabetes, range_margin=-0.5)


def test_mixed_frame_types_categories_and_imputation(mixed: pd.DataFrame) -> None:
    sig = infer_signature(mixed, range_margin=0.0)
    by_name = {s.name: s for s in sig.inputs}
    assert by_name["age"].type == "integer"
    assert (by_name["age"].minimum, by_name["age"].maximum) == (29.0, 67.0)
    assert by_name["age"].missing == "reject"

    assert by_name["sex"].type == "string"
    assert by_name["sex"].categories == ["F", "M"]
    assert by_name["sex"].missing == "impute"
    assert by_name["sex"].impute_value == "F"  # the mode
    assert "imputed" in by_name["sex"].description

    assert by_name["smoker"].type == "boolean"
    assert by_name["smoker"].minimum is None

    assert by_name["bmi"].type == "float"
    assert by_name["bmi"].missing == "impute"
    assert by_name["bmi"].impute_value == pytest.approx(27.5)  # median of 22.5, 27.5, 31.0
    assert "2 of 5" in by_name["bmi"].description
    assert "median" in by_name["bmi"].description

    assert by_name["ward"].type == "string"
    assert by_name["ward"].categories == ["er", "gen", "icu"]
    assert sig.all_numeric is False


def test_too_many_levels_means_free_text() -> None:
    frame = pd.DataFrame({"note": [f"level {i}" for i in range(60)]})
    assert infer_signature(frame).inputs[0].categories is None
    assert infer_signature(frame, categorical_max_levels=60).inputs[0].categories is not None


def test_nullable_integer_median_is_an_integer() -> None:
    frame = pd.DataFrame({"visits": pd.array([1, 2, None, 4], dtype="Int64")})
    spec = infer_signature(frame).inputs[0]
    assert spec.type == "integer"
    assert spec.missing == "impute"
    assert spec.impute_value == 2
    assert isinstance(spec.impute_value, int)


def test_bool_column_with_gaps_stays_boolean() -> None:
    frame = pd.DataFrame({"diabetic": [True, None, True, False]})
    spec = infer_signature(frame).inputs[0]
    assert spec.type == "boolean"
    assert spec.impute_value is True


def test_feature_names_signature_is_permissive_float() -> None:
    sig = signature_from_feature_names(["a", "b"])
    assert [(s.name, s.type, s.minimum, s.maximum) for s in sig.inputs] == [
        ("a", "float", None, None),
        ("b", "float", None, None),
    ]


def test_mlflow_types_map_onto_ours() -> None:
    sig = signature_from_mlflow(
        [
            ("a", "double"),
            ("b", "float"),
            ("c", "long"),
            ("d", "integer"),
            ("e", "boolean"),
            ("f", "string"),
            ("g", "binary"),
            ("h", "datetime"),
        ]
    )
    assert [s.type for s in sig.inputs] == [
        "float",
        "float",
        "integer",
        "integer",
        "boolean",
        "string",
        "string",
        "string",
    ]
    with pytest.raises(InvalidRequestError, match="tensor"):
        signature_from_mlflow([("x", "tensor")])


def test_json_round_trip_and_identifier_fields(mixed: pd.DataFrame) -> None:
    sig = infer_signature(mixed, range_margin=0.2)
    sig.inputs.append(FeatureSpec(name="mrn", type="string", identifier=True))
    sig.validator()  # the cached validator must not leak into the stored form
    text = sig.to_json()
    assert "validator" not in text
    again = Signature.from_json(text)
    assert again == sig
    assert again.identifier_fields == ["mrn"]
    assert Signature.model_validate(sig.model_dump()) == sig


def test_validator_is_cached_and_rebuilt_for_new_inputs(diabetes: pd.DataFrame) -> None:
    sig = infer_signature(diabetes)
    first = sig.validator()
    assert sig.validator() is first
    narrowed = sig.model_copy(update={"inputs": sig.inputs[:3]})
    assert narrowed.validator() is not first
    assert narrowed.validator().n_features == 3


def test_duplicate_feature_names_are_refused() -> None:
    sig = Signature(inputs=[FeatureSpec(name="a"), FeatureSpec(name="a")])
    with pytest.raises(InvalidRequestError, match="unique"):
        sig.validator()

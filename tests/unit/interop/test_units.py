"""UCUM conversions used for FHIR Observations: exact where defined, refused otherwise."""

from __future__ import annotations

import pytest

from medserve.features.interop.units import UnitConversionError, convert, normalise


@pytest.mark.parametrize(
    ("value", "unit", "target", "code", "expected"),
    [
        (5.5, "mmol/L", "mg/dL", "14749-6", 99.086),  # glucose, molar mass 180.156
        (88.42, "umol/L", "mg/dL", "14682-9", 1.0002),  # creatinine, molar mass 113.12
        (88.42, "µmol/L", "mg/dL", "2160-0", 1.0002),  # the micro sign as feeds write it
        (5.0, "mmol/L", "mg/dL", "2093-3", 193.33),  # cholesterol
        (98.6, "[degF]", "Cel", None, 37.0),
        (310.15, "K", "Cel", None, 37.0),
        (37.0, "Cel", "[degF]", None, 98.6),
        (16.0, "kPa", "mm[Hg]", None, 120.01),
        (154.0, "[lb_av]", "kg", None, 69.853),
        (70.0, "[in_i]", "cm", None, 177.8),
        (1.2, "g/L", "mg/dL", None, 120.0),
        (48.0, "mmol/mol", "%", "4548-4", 6.543),  # HbA1c IFCC -> NGSP
        (120.0, "mmHg", "mm[Hg]", None, 120.0),
        (99.0, "mg/dl", "mg/dL", "2345-7", 99.0),
    ],
)
def test_conversions(
    value: float, unit: str, target: str, code: str | None, expected: float
) -> None:
    assert convert(value, unit, target, code) == pytest.approx(expected, rel=1e-3)


def test_round_trip_is_identity() -> None:
    there = convert(7.0, "mmol/L", "mg/dL", "2345-7")
    assert convert(there, "mg/dL", "mmol/L", "2345-7") == pytest.approx(7.0)


@pytest.mark.parametrize(
    ("unit", "target", "code", "fragment"),
    [
        ("mmol/L", "mg/dL", None, "no analyte code"),  # molar mass unknown without a code
        ("mmol/L", "mg/dL", "39156-5", "no molar mass known for LOINC 39156-5"),
        ("mg", "mg/dL", "2345-7", "mass vs mass conc"),  # an amount is not a concentration
        ("furlongs", "mg/dL", "2345-7", "unknown unit"),
        ("[degF]", "mg/dL", None, "cannot be converted"),
        (None, "mg/dL", "2345-7", "no unit"),
    ],
)
def test_refusals_name_the_units(
    unit: str | None, target: str, code: str | None, fragment: str
) -> None:
    with pytest.raises(UnitConversionError) as caught:
        convert(1.0, unit, target, code)
    assert fragment in str(caught.value)


def test_normalise_spellings() -> None:
    assert normalise("MG/DL") == "mg/dL"
    assert normalise("°F") == "[degF]"
    assert normalise("mm[Hg]") == "mm[Hg]"

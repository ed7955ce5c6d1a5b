"""UCUM unit conversion for the quantities clinical models read from FHIR Observations.

Only conversions that are exact or defined by convention are made; anything else is refused
with a message naming both units, so a wrong unit never turns silently into a wrong score.
Molar conversions (e.g. glucose mmol/L -> mg/dL) need the analyte's molar mass, which is known
per LOINC code below; an unknown analyte cannot be converted between molar and mass units.
"""

from __future__ import annotations

from typing import Final


class UnitConversionError(ValueError):
    """The value's unit cannot be converted to the unit the model expects."""


# Spellings seen in EHR feeds -> the UCUM code. UCUM is case-sensitive; feeds often are not.
_SYNONYMS: Final[dict[str, str]] = {
    "mg/dl": "mg/dL",
    "g/dl": "g/dL",
    "g/l": "g/L",
    "mg/l": "mg/L",
    "mmol/l": "mmol/L",
    "umol/l": "umol/L",
    "µmol/l": "umol/L",
    "μmol/l": "umol/L",
    "nmol/l": "nmol/L",
    "mol/l": "mol/L",
    "mmhg": "mm[Hg]",
    "mm hg": "mm[Hg]",
    "kpa": "kPa",
    "degf": "[degF]",
    "°f": "[degF]",
    "f": "[degF]",
    "degc": "Cel",
    "°c": "Cel",
    "c": "Cel",
    "cel": "Cel",
    "k": "K",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "[lb_av]": "[lb_av]",
    "kg": "kg",
    "g": "g",
    "mg": "mg",
    "in": "[in_i]",
    "[in_i]": "[in_i]",
    "cm": "cm",
    "m": "m",
    "kg/m2": "kg/m2",
    "kg/m^2": "kg/m2",
    "%": "%",
    "mmol/mol": "mmol/mol",
    "/min": "/min",
    "{beats}/min": "/min",
    "beats/min": "/min",
    "bpm": "/min",
    "{breaths}/min": "/min",
    "a": "a",
    "yr": "a",
    "years": "a",
}

# Units of one dimension, as factors to a base unit of that dimension.
_LINEAR: Final[dict[str, tuple[str, float]]] = {
    # mass concentration, base g/L
    "g/L": ("mass_conc", 1.0),
    "g/dL": ("mass_conc", 10.0),
    "mg/dL": ("mass_conc", 0.01),
    "mg/L": ("mass_conc", 0.001),
    "ug/mL": ("mass_conc", 0.001),
    # substance concentration, base mol/L
    "mol/L": ("subst_conc", 1.0),
    "mmol/L": ("subst_conc", 1e-3),
    "umol/L": ("subst_conc", 1e-6),
    "nmol/L": ("subst_conc", 1e-9),
    # pressure, base Pa
    "mm[Hg]": ("pressure", 133.322387415),
    "kPa": ("pressure", 1000.0),
    # mass, base kg
    "kg": ("mass", 1.0),
    "g": ("mass", 1e-3),
    "mg": ("mass", 1e-6),
    "[lb_av]": ("mass", 0.45359237),
    # length, base m
    "m": ("length", 1.0),
    "cm": ("length", 0.01),
    "[in_i]": ("length", 0.0254),
    # unique units
    "kg/m2": ("bmi", 1.0),
    "/min": ("rate", 1.0),
    "a": ("age", 1.0),
}

# Molar masses (g/mol) by LOINC code, for molar <-> mass concentration.
_GLUCOSE = 180.156
_CREATININE = 113.12
_CHOLESTEROL = 386.65
MOLAR_MASS: Final[dict[str, float]] = {
    "2345-7": _GLUCOSE,  # Glucose [Mass/volume] in Serum or Plasma
    "2339-0": _GLUCOSE,  # Glucose [Mass/volume] in Blood
    "15074-8": _GLUCOSE,  # Glucose [Moles/volume] in Blood
    "14749-6": _GLUCOSE,  # Glucose [Moles/volume] in Serum or Plasma
    "2160-0": _CREATININE,  # Creatinine [Mass/volume] in Serum or Plasma
    "14682-9": _CREATININE,  # Creatinine [Moles/volume] in Serum or Plasma
    "38483-4": _CREATININE,  # Creatinine [Mass/volume] in Blood
    "2093-3": _CHOLESTEROL,  # Cholesterol [Mass/volume] in Serum or Plasma
    "2085-9": _CHOLESTEROL,  # HDL cholesterol
    "13457-7": _CHOLESTEROL,  # LDL cholesterol (calculated)
    "2571-8": 885.7,  # Triglyceride (as triolein)
    "3094-0": 28.014,  # Urea nitrogen (as N2)
    "17861-6": 40.078,  # Calcium
    "3084-1": 168.11,  # Urate
}

# HbA1c: NGSP % <-> IFCC mmol/mol (master equation), for the HbA1c LOINC codes.
HBA1C_CODES: Final = frozenset({"4548-4", "17856-6", "59261-8"})


def normalise(unit: str | None) -> str | None:
    """The UCUM code for a unit as written in a feed (``mg/dl`` -> ``mg/dL``)."""
    if unit is None:
        return None
    text = unit.strip()
    if text in _LINEAR or text in {"Cel", "[degF]", "K", "%", "mmol/mol"}:
        return text
    return _SYNONYMS.get(text.lower(), text)


def _temperature_to_celsius(value: float, unit: str) -> float:
    if unit == "Cel":
        return value
    if unit == "[degF]":
        return (value - 32.0) * 5.0 / 9.0
    return value - 273.15  # K


def _celsius_to(value: float, unit: str) -> float:
    if unit == "Cel":
        return value
    if unit == "[degF]":
        return value * 9.0 / 5.0 + 32.0
    return value + 273.15


_TEMPERATURE: Final = frozenset({"Cel", "[degF]", "K"})


def _hba1c(value: float, source: str, target: str) -> float | None:
    if source == "mmol/mol" and target == "%":
        return value * 0.09148 + 2.152
    if source == "%" and target == "mmol/mol":
        return (value - 2.152) / 0.09148
    return None


def convert(value: float, unit: str | None, target: str, code: str | None = None) -> float:
    """``value`` in ``unit`` expressed in ``target`` (UCUM codes or common spellings).

    ``code`` is the LOINC code of the observation; it decides molar masses and HbA1c scales.
    A missing unit is accepted only for unitless targets.
    """
    source = normalise(unit)
    goal = normalise(target) or target
    if source is None or source == "":
        if goal in {"1", "{score}", ""}:
            return value
        raise UnitConversionError(f"the value has no unit; {target} was expected")
    if source == goal:
        return value
    if source in _TEMPERATURE and goal in _TEMPERATURE:
        return _celsius_to(_temperature_to_celsius(value, source), goal)
    if code in HBA1C_CODES:
        converted = _hba1c(value, source, goal)
        if converted is not None:
            return converted
    src, dst = _LINEAR.get(source), _LINEAR.get(goal)
    if src is not None and dst is not None:
        if src[0] == dst[0]:
            return value * src[1] / dst[1]
        molar = _molar(code)
        if molar is not None and {src[0], dst[0]} == {"mass_conc", "subst_conc"}:
            base = value * src[1]  # g/L or mol/L
            base = base * molar if src[0] == "subst_conc" else base / molar
            return base / dst[1]
    raise UnitConversionError(f"{unit!r} cannot be converted to {target}" + _why(code, src, dst))


def _molar(code: str | None) -> float | None:
    return MOLAR_MASS.get(code) if code else None


def _why(code: str | None, src: tuple[str, float] | None, dst: tuple[str, float] | None) -> str:
    if src is None:
        return " (unknown unit)"
    if dst is None:
        return " (the expected unit is not one medserve converts to)"
    if {src[0], dst[0]} == {"mass_conc", "subst_conc"}:
        return f" (no molar mass known for LOINC {code})" if code else " (no analyte code)"
    return f" ({src[0].replace('_', ' ')} vs {dst[0].replace('_', ' ')})"

"""The FHIR feature map a version declares in ``serving_config["fhir"]``.

Example (YAML as it would sit in a registration script)::

    fhir:
      lookback_days: 365
      outcome: {text: "Type 2 diabetes within 5 years", code: "44054006",
                system: "http://snomed.info/sct"}
      positive_class: "1"
      risk_bands:
        - {below: 0.1, code: low, indicator: info}
        - {below: 0.3, code: moderate, indicator: warning}
        - {code: high, indicator: critical}
      hooks: [patient-view]
      features:
        age: {patient: age}
        sex_male: {patient: gender, map: {male: 1, female: 0}}
        glucose: {loinc: ["2345-7", "14749-6"], unit: mg/dL, aggregate: latest}
        systolic_bp: {loinc: "8480-6", unit: "mm[Hg]", aggregate: mean, lookback_days: 90}
        hypertension: {condition: ["38341003"]}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medserve.core.errors import InvalidRequestError
from medserve.core.registry.signature import Signature
from medserve.core.series import padded_columns

# series: every Observation in the look-back window becomes the model's series of that name
Aggregate = Literal["latest", "earliest", "mean", "min", "max", "series"]
PatientField = Literal["age", "gender"]
Indicator = Literal["info", "warning", "critical"]
# http://terminology.hl7.org/CodeSystem/risk-probability
RiskCode = Literal["negligible", "low", "moderate", "high", "certain"]
RISK_PROBABILITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/risk-probability"
LOINC = "http://loinc.org"


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class FeatureSource(BaseModel):
    """Where one feature comes from: exactly one of ``loinc``, ``patient``, ``condition``."""

    model_config = ConfigDict(extra="forbid")

    loinc: list[str] | None = Field(
        default=None,
        description="LOINC codes accepted for this feature (first listed is preferred in "
        "prefetch); components of panels (e.g. 8480-6 inside 85354-9) count too.",
    )
    patient: PatientField | None = Field(
        default=None, description="A Patient field: age in years (from birthDate) or gender."
    )
    condition: list[str] | None = Field(
        default=None,
        description="Condition codes (any system, or 'system|code'); the feature is 1 when an "
        "active Condition with one of them exists, else 0.",
    )
    unit: str | None = Field(default=None, description="UCUM unit the model was trained in.")
    aggregate: Aggregate = "latest"
    lookback_days: int | None = Field(default=None, ge=1)
    map: dict[str, Any] | None = Field(
        default=None, description="Value mapping for coded values, e.g. {male: 1, female: 0}."
    )

    _normalise_loinc = field_validator("loinc", "condition", mode="before")(_as_list)

    @model_validator(mode="after")
    def _one_source(self) -> FeatureSource:
        chosen = [k for k in ("loinc", "patient", "condition") if getattr(self, k)]
        if len(chosen) != 1:
            raise ValueError("a feature needs exactly one of loinc, patient or condition")
        if self.loinc and not self.unit:
            raise ValueError("a LOINC feature needs the UCUM unit the model expects ('unit')")
        return self


class RiskBand(BaseModel):
    """Probabilities below ``below`` (the last band: any) get this qualitative risk."""

    model_config = ConfigDict(extra="forbid")

    below: float | None = Field(default=None, gt=0.0, le=1.0)
    code: RiskCode
    indicator: Indicator = "info"
    label: str | None = None


class Outcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    code: str | None = None
    system: str | None = None


class FhirMap(BaseModel):
    model_config = ConfigDict(extra="forbid")

    features: dict[str, FeatureSource]
    lookback_days: int = Field(default=365, ge=1)
    outcome: Outcome = Outcome(text="risk")
    positive_class: str | None = Field(
        default=None, description="Class whose probability is the risk (default: the last)."
    )
    risk_bands: list[RiskBand] = Field(default_factory=list)
    hooks: list[str] = Field(
        default_factory=list, description="CDS hooks answered, e.g. patient-view, order-select."
    )
    title: str | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _bands_ordered(self) -> FhirMap:
        bounds = [b.below for b in self.risk_bands]
        if bounds:
            if any(b is None for b in bounds[:-1]):
                raise ValueError("only the last risk band may leave 'below' unset")
            finite = [b for b in bounds if b is not None]
            if finite != sorted(finite) or len(set(finite)) != len(finite):
                raise ValueError("risk bands must be in increasing order of 'below'")
        return self

    def lookback(self, feature: FeatureSource) -> int:
        return feature.lookback_days or self.lookback_days

    def band(self, probability: float) -> RiskBand | None:
        for band in self.risk_bands:
            if band.below is None or probability < band.below:
                return band
        return None

    def check_against(self, signature: Signature) -> None:
        """Every mapped feature is an input, and every required input is mapped (or imputed)."""
        inputs = {f.name: f for f in signature.inputs}
        series = {s.name for s in signature.series}
        for name, source in self.features.items():
            if (source.aggregate == "series") != (name in series):
                raise InvalidRequestError(
                    f"the FHIR feature map: {name!r} is "
                    + ("not a series of the model" if name not in series else "a series")
                    + ": a series takes aggregate 'series', an input does not"
                )
        if series:  # derived inputs are computed from the series, never mapped
            derived = {f.column for f in signature.series_features} or set(
                padded_columns(signature.series)
            )
            inputs = {k: v for k, v in inputs.items() if k not in derived}
        unknown = sorted(set(self.features) - set(inputs) - series)
        unmapped = sorted(
            name
            for name, spec in inputs.items()
            if name not in self.features and spec.required and spec.missing != "impute"
        )
        problems = []
        if unknown:
            problems.append(f"not model inputs: {', '.join(unknown)}")
        if unmapped:
            problems.append(f"required inputs with no FHIR source: {', '.join(unmapped)}")
        if problems:
            raise InvalidRequestError(
                "the FHIR feature map does not fit the signature: " + "; ".join(problems)
            )


def fhir_map_of(serving_config: dict[str, Any]) -> FhirMap | None:
    raw = serving_config.get("fhir")
    if raw is None:
        return None
    return raw if isinstance(raw, FhirMap) else FhirMap.model_validate(raw)

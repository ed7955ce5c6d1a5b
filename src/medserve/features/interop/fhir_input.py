"""FHIR R4 Bundle -> one feature record per Patient, following a version's feature map.

The Bundle is validated with ``fhir.resources`` first (R4B models, wire-compatible with R4 for
Patient, Observation, Condition and Bundle); values are then read from the JSON itself, so that
partial dates and codings are handled exactly as written. Every problem is collected (all
patients, all features) before anything is refused, so a caller fixes a feed in one round trip.
Problems never quote identifiers or values: they name the feature, the LOINC code, the units
and the Bundle entry by index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from medserve.core.errors import ValidationFailedError
from medserve.core.registry.signature import Signature
from medserve.features.interop.feature_map import LOINC, FeatureSource, FhirMap
from medserve.features.interop.units import UnitConversionError, convert

_EXCLUDED_STATUS = frozenset({"entered-in-error", "cancelled"})
_INACTIVE_CONDITION = frozenset({"inactive", "remission", "resolved"})
_REFUTED = frozenset({"refuted", "entered-in-error"})
_PATIENT_TAIL = re.compile(r"(?:^|/)(Patient/[A-Za-z0-9\-.]{1,64})(?:/_history/.*)?$")


@dataclass(frozen=True)
class Problem:
    """One reason a Bundle cannot be scored; becomes an ``OperationOutcome.issue``."""

    code: str  # OperationOutcome issue type: structure | required | value | invalid
    message: str
    expression: str | None = None
    feature: str | None = None

    def as_detail(self) -> dict[str, Any]:
        return {
            "field": self.feature or self.expression or "Bundle",
            "rule": self.code,
            "message": self.message,
        }


class FhirInputError(ValidationFailedError):
    """A FHIR Bundle that cannot be turned into model inputs; ``problems`` lists every reason."""

    code = "fhir_input_invalid"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        summary = "; ".join(p.message for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(
            f"the FHIR Bundle cannot be scored: {summary}{more}",
            details=[p.as_detail() for p in problems],
        )


@dataclass
class PatientInput:
    reference: str  # how the Bundle refers to the patient (Patient/id or the entry's fullUrl)
    entry: int  # index of the Patient entry
    record: dict[str, Any] = field(default_factory=dict)
    basis: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Reading:
    code: str
    at: datetime | None
    value: float | None
    unit: str | None
    reference: str
    expression: str


def parse_fhir_datetime(text: Any) -> datetime | None:
    """FHIR dateTime/date/instant (``2024``, ``2024-05``, ``2024-05-01``, with time and zone)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        if len(text) == 4:
            return datetime(int(text), 1, 1, tzinfo=UTC)
        if len(text) == 7:
            return datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def validate_bundle(raw: Any) -> dict[str, Any]:
    """The Bundle as JSON, checked against the FHIR resource models; structure problems raise."""

    if not isinstance(raw, dict) or raw.get("resourceType") != "Bundle":
        kind = raw.get("resourceType") if isinstance(raw, dict) else type(raw).__name__
        raise FhirInputError(
            [Problem("structure", f"a FHIR Bundle is expected, not {kind!r}", "Bundle")]
        )
    # lazy import (heavy: fhir.resources, kept off the serving path)
    from fhir.resources.R4B.bundle import Bundle  # noqa: PLC0415

    try:
        Bundle.model_validate(raw)
    except ValidationError as exc:
        problems = [
            Problem(
                "structure",
                f"{_loc(err.get('loc', ()))}: {err.get('msg', 'invalid')}",
                "Bundle." + _loc(err.get("loc", ())),
            )
            for err in exc.errors()[:20]
        ]
        raise FhirInputError(problems) from exc
    return raw


def _loc(loc: Any) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int) and parts:
            parts[-1] = f"{parts[-1]}[{p}]"
        elif isinstance(p, str) and not p[:1].isupper():
            parts.append(p)
    return ".".join(parts) or "Bundle"


def _patient_key(reference: str | None) -> str | None:
    if not reference:
        return None
    match = _PATIENT_TAIL.search(reference)
    return match.group(1) if match else reference


def _codes(concept: Any, system: str | None = None) -> list[str]:
    codings = concept.get("coding", []) if isinstance(concept, dict) else []
    out = []
    for coding in codings:
        code = coding.get("code")
        if not code:
            continue
        if system is None:
            out.append(f"{coding.get('system', '')}|{code}")
        elif coding.get("system") in (system, None):
            out.append(code)
    return out


def _observation_readings(resource: dict[str, Any], reference: str, expr: str) -> list[_Reading]:
    at = parse_fhir_datetime(
        resource.get("effectiveDateTime")
        or (resource.get("effectivePeriod") or {}).get("start")
        or resource.get("effectiveInstant")
        or resource.get("issued")
    )
    readings = []
    for code in _codes(resource.get("code"), LOINC):
        quantity = resource.get("valueQuantity") or {}
        readings.append(_reading(code, at, quantity, reference, f"{expr}.valueQuantity"))
    for j, component in enumerate(resource.get("component") or []):
        for code in _codes(component.get("code"), LOINC):
            quantity = component.get("valueQuantity") or {}
            path = f"{expr}.component[{j}].valueQuantity"
            readings.append(_reading(code, at, quantity, reference, path))
    return readings


def _reading(
    code: str, at: datetime | None, quantity: dict[str, Any], reference: str, expr: str
) -> _Reading:
    value = quantity.get("value")
    unit = quantity.get("code") if quantity.get("system") == "http://unitsofmeasure.org" else None
    return _Reading(
        code=code,
        at=at,
        value=float(value) if isinstance(value, int | float) else None,
        unit=unit or quantity.get("unit") or quantity.get("code"),
        reference=reference,
        expression=expr,
    )


def _condition_active(resource: dict[str, Any]) -> bool:
    clinical = set(_codes(resource.get("clinicalStatus"), None))
    verification = set(_codes(resource.get("verificationStatus"), None))
    if any(c.split("|", 1)[1] in _INACTIVE_CONDITION for c in clinical):
        return False
    return not any(c.split("|", 1)[1] in _REFUTED for c in verification)


def _entry_reference(entry: dict[str, Any], resource: dict[str, Any]) -> str:
    full_url = entry.get("fullUrl")
    if resource.get("id"):
        return f"{resource['resourceType']}/{resource['id']}"
    return str(full_url) if full_url else f"{resource.get('resourceType')}/#"


def bundle_to_records(
    raw: Any,
    fmap: FhirMap,
    signature: Signature,
    as_of: datetime | None = None,
) -> list[PatientInput]:
    """One record per Patient in the Bundle; raises :class:`FhirInputError` with every problem."""
    bundle = validate_bundle(raw)
    as_of = as_of or parse_fhir_datetime(bundle.get("timestamp")) or datetime.now(UTC)
    patients: dict[str, PatientInput] = {}
    resources: dict[str, dict[str, Any]] = {}
    readings: dict[str, list[_Reading]] = {}
    conditions: dict[str, list[tuple[set[str], str]]] = {}
    unattached: list[tuple[str, Any]] = []
    for i, entry in enumerate(bundle.get("entry") or []):
        resource = entry.get("resource") or {}
        kind = resource.get("resourceType")
        expr = f"Bundle.entry[{i}].resource"
        if kind == "Patient":
            ref = _entry_reference(entry, resource)
            patient = PatientInput(reference=ref, entry=i)
            for key in {ref, entry.get("fullUrl"), _patient_key(entry.get("fullUrl"))}:
                if key:
                    patients[key] = patient
            resources[ref] = resource
        elif kind in ("Observation", "Condition"):
            if kind == "Observation" and resource.get("status") in _EXCLUDED_STATUS:
                continue
            subject = (resource.get("subject") or {}).get("reference")
            ref = entry.get("fullUrl") or _entry_reference(entry, resource)
            if kind == "Observation":
                item: Any = _observation_readings(resource, ref, expr)
            elif _condition_active(resource):
                item = (set(_codes(resource.get("code"), None)), ref)
            else:
                continue
            unattached.append((subject or "", (kind, item)))
    unique = {id(p): p for p in patients.values()}
    if not unique:
        raise FhirInputError([Problem("required", "the Bundle holds no Patient", "Bundle.entry")])
    only = next(iter(unique.values())) if len(unique) == 1 else None
    for subject, (kind, item) in unattached:
        owner = patients.get(subject) or patients.get(_patient_key(subject) or "")
        if owner is None and only is not None and not subject:
            owner = only
        if owner is None:
            continue
        if kind == "Observation":
            readings.setdefault(owner.reference, []).extend(item)
        else:
            conditions.setdefault(owner.reference, []).append(item)
    problems: list[Problem] = []
    specs = {f.name: f for f in signature.inputs}
    ordered = sorted(unique.values(), key=lambda p: p.entry)
    for patient in ordered:
        context = _PatientContext(
            patient,
            resources[patient.reference],
            readings.get(patient.reference, []),
            conditions.get(patient.reference, []),
            as_of,
            fmap,
        )
        for name, source in fmap.features.items():
            spec = specs.get(name)
            value = context.value(name, source, problems)
            if value is None:
                if spec is not None and spec.missing == "impute":
                    patient.record[name] = None
                continue
            patient.record[name] = _typed(value, spec.type if spec else "float")
    if problems:
        raise FhirInputError(problems)
    return ordered


def _typed(value: Any, ftype: str) -> Any:
    if ftype == "integer" and isinstance(value, float | int):
        return round(value)
    if ftype == "boolean" and isinstance(value, float | int):
        return bool(value)
    if ftype == "float" and isinstance(value, int | bool):
        return float(value)
    return value


@dataclass
class _PatientContext:
    patient: PatientInput
    resource: dict[str, Any]
    readings: list[_Reading]
    conditions: list[tuple[set[str], str]]
    as_of: datetime
    fmap: FhirMap

    @property
    def expr(self) -> str:
        return f"Bundle.entry[{self.patient.entry}].resource"

    def value(self, name: str, source: FeatureSource, problems: list[Problem]) -> Any:
        if source.patient is not None:
            return self._patient_field(name, source, problems)
        if source.condition is not None:
            return self._condition(source)
        return self._observation(name, source, problems)

    def _patient_field(self, name: str, source: FeatureSource, problems: list[Problem]) -> Any:
        if source.patient == "age":
            born = parse_fhir_datetime(self.resource.get("birthDate"))
            if born is None:
                problems.append(
                    Problem(
                        "required",
                        f"feature {name!r} needs Patient.birthDate",
                        f"{self.expr}.birthDate",
                        name,
                    )
                )
                return None
            years = self.as_of.year - born.year
            if (self.as_of.month, self.as_of.day) < (born.month, born.day):
                years -= 1
            return years
        gender = self.resource.get("gender")
        if gender is None:
            problems.append(
                Problem(
                    "required",
                    f"feature {name!r} needs Patient.gender",
                    f"{self.expr}.gender",
                    name,
                )
            )
            return None
        if source.map is None:
            return gender
        if gender not in source.map:
            allowed = ", ".join(sorted(source.map))
            problems.append(
                Problem(
                    "value",
                    f"feature {name!r}: Patient.gender {gender!r} is not one of {allowed}",
                    f"{self.expr}.gender",
                    name,
                )
            )
            return None
        return source.map[gender]

    def _condition(self, source: FeatureSource) -> int:
        wanted = source.condition or []
        for codes, reference in self.conditions:
            bare = {c.split("|", 1)[1] for c in codes}
            if any(w in codes or w in bare for w in wanted):
                self.patient.basis.append(reference)
                return 1
        return 0

    def _observation(self, name: str, source: FeatureSource, problems: list[Problem]) -> Any:
        codes = set(source.loinc or [])
        window_start = self.as_of - timedelta(days=self.fmap.lookback(source))
        window_end = self.as_of + timedelta(days=1)
        candidates = [
            r
            for r in self.readings
            if r.code in codes and r.at is not None and window_start <= r.at <= window_end
        ]
        label = "/".join(source.loinc or [])
        if not candidates:
            problems.append(
                Problem(
                    "required",
                    f"feature {name!r}: no Observation with LOINC {label} for the patient in the "
                    f"last {self.fmap.lookback(source)} days",
                    f"{self.expr}",
                    name,
                )
            )
            return None
        values: list[tuple[datetime, float, str]] = []
        failed = False
        for reading in candidates:
            if reading.value is None:
                problems.append(
                    Problem(
                        "value",
                        f"feature {name!r}: Observation LOINC {reading.code} has no valueQuantity",
                        reading.expression,
                        name,
                    )
                )
                failed = True
                continue
            try:
                converted = convert(reading.value, reading.unit, source.unit or "", reading.code)
            except UnitConversionError as exc:
                problems.append(
                    Problem(
                        "value",
                        f"feature {name!r}: LOINC {reading.code} unit {exc}",
                        reading.expression,
                        name,
                    )
                )
                failed = True
                continue
            assert reading.at is not None
            values.append((reading.at, converted, reading.reference))
        if failed or not values:
            return None
        return self._aggregate(source, values)

    def _aggregate(self, source: FeatureSource, values: list[tuple[datetime, float, str]]) -> float:
        values.sort(key=lambda v: v[0])
        if source.aggregate in ("latest", "earliest"):
            chosen = values[-1] if source.aggregate == "latest" else values[0]
            self._use(chosen[2])
            return chosen[1]
        for _, _, reference in values:
            self._use(reference)
        numbers = [v[1] for v in values]
        if source.aggregate == "mean":
            return sum(numbers) / len(numbers)
        return min(numbers) if source.aggregate == "min" else max(numbers)

    def _use(self, reference: str) -> None:
        if reference not in self.patient.basis:
            self.patient.basis.append(reference)

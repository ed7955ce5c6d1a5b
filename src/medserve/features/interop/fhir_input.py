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

# Observations that carry no usable result (FHIR observation-status): never a reading.
_NO_RESULT_STATUS = frozenset({"registered", "cancelled", "entered-in-error"})
_INACTIVE_CONDITION = frozenset({"inactive", "remission", "resolved"})
_REFUTED = frozenset({"refuted", "entered-in-error"})
# A RESTful reference: [root/]Type/id[/_history/vid] (FHIR R4, References and Bundle.fullUrl).
_RESTFUL = re.compile(
    r"^(?:(?P<root>https?://\S+?)/)?(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)
_VALUE_TYPES = (
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
)


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
    """One Patient of a Bundle. ``reference`` is how an answer names it: the entry's fullUrl
    where that is a server's URL (two servers may both hold a ``Patient/123``), else
    ``Patient/<id>``. ``logical`` is ``Patient/<id>``: the form the prediction log pseudonymizes,
    as erasure and outcomes name a patient by id."""

    reference: str
    entry: int  # index of the Patient entry
    logical: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    basis: list[str] = field(default_factory=list)

    @property
    def log_reference(self) -> str:
        return self.logical or self.reference


@dataclass(frozen=True)
class _Reading:
    """One coded result. ``kind`` is ``valueQuantity`` when ``value`` holds a number, ``absent``
    for a result without a value (``dataAbsentReason``), else the value[x] type found."""

    code: str
    at: datetime | None
    value: float | None
    unit: str | None
    reference: str
    expression: str
    kind: str = "valueQuantity"
    comparator: str | None = None


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


def _restful(url: Any) -> tuple[str | None, str] | None:
    """``(root, "Type/id")`` of a RESTful URL or relative reference (history dropped); the root
    is None for a relative one. None for anything else (a URN, a fragment)."""
    if not isinstance(url, str):
        return None
    match = _RESTFUL.match(url)
    if match is None:
        return None
    return match.group("root"), f"{match.group('type')}/{match.group('id')}"


def _without_history(url: str) -> str:
    cut = url.find("/_history/")
    return url[:cut] if cut >= 0 else url


class _PatientIndex:
    """The Bundle's Patients, found the way FHIR R4 resolves references inside a Bundle: an
    absolute reference (``http...``, ``urn:uuid:...``) is an entry's fullUrl; a relative
    ``Patient/123`` is read against the server root of the referring entry's fullUrl. Where
    the referring entry has no server fullUrl (a URN or none), the reference is to the unknown
    server the Bundle came from: it matches a Patient that has no server fullUrl either. A
    bare id therefore never joins resources of two different servers."""

    def __init__(self) -> None:
        self.patients: list[PatientInput] = []
        self._by_url: dict[str, PatientInput] = {}
        self._by_local: dict[tuple[str | None, str], PatientInput] = {}

    def add(self, entry: dict[str, Any], resource: dict[str, Any], index: int) -> Problem | None:
        full_url = entry.get("fullUrl")
        split = _restful(full_url)
        root = split[0] if split is not None else None
        logical = f"Patient/{resource['id']}" if resource.get("id") else None
        if root is not None and isinstance(full_url, str):
            reference = _without_history(full_url)
        else:
            reference = logical or (str(full_url) if full_url else f"Patient/#{index}")
        patient = PatientInput(reference=reference, entry=index, logical=logical)
        keys: list[tuple[dict[Any, PatientInput], Any]] = []
        if isinstance(full_url, str) and full_url:
            keys.append((self._by_url, _without_history(full_url)))
        if logical is not None:
            keys.append((self._by_local, (root, logical)))
        for table, key in keys:
            other = table.get(key)
            if other is not None:
                return Problem(
                    "structure",
                    f"Bundle.entry[{index}] is a second Patient with the identity of "
                    f"Bundle.entry[{other.entry}] (same fullUrl, or same id with no server "
                    "fullUrl to tell them apart): references to them are ambiguous",
                    f"Bundle.entry[{index}]",
                )
        for table, key in keys:
            table[key] = patient
        self.patients.append(patient)
        return None

    def resolve(self, reference: Any, referrer: Any) -> PatientInput | None:
        """The Patient ``reference`` (written in the entry whose fullUrl is ``referrer``) names."""
        if not isinstance(reference, str) or not reference or reference.startswith("#"):
            return None
        target = _without_history(reference)
        split = _restful(target)
        if ":" in target.split("/", 1)[0]:  # absolute: a scheme before the first '/'
            found = self._by_url.get(target)
            if found is None and split is not None and split[0] is not None:
                found = self._by_local.get(split)
            return found
        if split is None:
            return None
        base = _restful(referrer)
        return self._by_local.get((base[0] if base is not None else None, split[1]))


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


def observation_time(resource: dict[str, Any]) -> datetime | None:
    """When an Observation was true: effectiveDateTime, else its effectivePeriod's end (the
    result of a collection period is known at its end) or start, else effectiveInstant, else
    issued."""
    period = resource.get("effectivePeriod") or {}
    return parse_fhir_datetime(
        resource.get("effectiveDateTime")
        or period.get("end")
        or period.get("start")
        or resource.get("effectiveInstant")
        or resource.get("issued")
    )


def _observation_readings(resource: dict[str, Any], reference: str, expr: str) -> list[_Reading]:
    if resource.get("status") in _NO_RESULT_STATUS:
        return []
    at = observation_time(resource)
    readings = []
    components = resource.get("component") or []
    # a panel (components, no value of its own) is not a reading of the panel's code
    if not components or any(k in resource for k in (*_VALUE_TYPES, "dataAbsentReason")):
        for code in _codes(resource.get("code"), LOINC):
            readings.append(_reading(code, at, resource, reference, expr))
    for j, component in enumerate(components):
        for code in _codes(component.get("code"), LOINC):
            path = f"{expr}.component[{j}]"
            readings.append(_reading(code, at, component, reference, path))
    return readings


def _reading(
    code: str, at: datetime | None, holder: dict[str, Any], reference: str, expr: str
) -> _Reading:
    """The value of an Observation or a component (``holder``) as a reading."""
    kind = next((k for k in _VALUE_TYPES if k in holder), "absent")
    quantity = holder.get("valueQuantity") if kind == "valueQuantity" else None
    if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), int | float):
        # no number: a dataAbsentReason, no value at all, or a value of another type
        return _Reading(code, at, None, None, reference, f"{expr}.{kind}", kind=kind)
    ucum = quantity.get("system") == "http://unitsofmeasure.org"
    unit = quantity.get("code") if ucum else None
    return _Reading(
        code=code,
        at=at,
        value=float(quantity["value"]),
        unit=unit or quantity.get("unit") or quantity.get("code"),
        reference=reference,
        expression=f"{expr}.valueQuantity",
        comparator=quantity.get("comparator") or None,
    )


def _condition_active(resource: dict[str, Any]) -> bool:
    clinical = set(_codes(resource.get("clinicalStatus"), None))
    verification = set(_codes(resource.get("verificationStatus"), None))
    if any(c.split("|", 1)[1] in _INACTIVE_CONDITION for c in clinical):
        return False
    return not any(c.split("|", 1)[1] in _REFUTED for c in verification)


def _entry_reference(entry: dict[str, Any], resource: dict[str, Any]) -> str:
    """How an answer's ``basis`` names a resource of the Bundle: its fullUrl, else Type/id."""
    full_url = entry.get("fullUrl")
    if full_url:
        return str(full_url)
    if resource.get("id"):
        return f"{resource['resourceType']}/{resource['id']}"
    return f"{resource.get('resourceType')}/#"


def bundle_to_records(
    raw: Any,
    fmap: FhirMap,
    signature: Signature,
    as_of: datetime | None = None,
) -> list[PatientInput]:
    """One record per Patient in the Bundle; raises :class:`FhirInputError` with every problem."""
    bundle = validate_bundle(raw)
    stamped = as_of or parse_fhir_datetime(bundle.get("timestamp"))
    if stamped is None and any(s.aggregate == "series" for s in fmap.features.values()):
        # a series is measured back from its prediction time: the server clock would silently
        # empty the window of a Bundle sent later (docs/trajectories.md)
        raise FhirInputError(
            [
                Problem(
                    "required",
                    "Bundle.timestamp (the prediction time, with an offset) is required by a "
                    "model that takes series",
                    "Bundle.timestamp",
                )
            ]
        )
    as_of = stamped or datetime.now(UTC)
    index = _PatientIndex()
    resources: dict[int, dict[str, Any]] = {}
    readings: dict[int, list[_Reading]] = {}
    conditions: dict[int, list[tuple[set[str], str]]] = {}
    unattached: list[tuple[Any, Any, str, Any]] = []
    problems: list[Problem] = []
    for i, entry in enumerate(bundle.get("entry") or []):
        resource = entry.get("resource") or {}
        kind = resource.get("resourceType")
        expr = f"Bundle.entry[{i}].resource"
        if kind == "Patient":
            problem = index.add(entry, resource, i)
            if problem is not None:
                problems.append(problem)
            resources[i] = resource
        elif kind in ("Observation", "Condition"):
            subject = (resource.get("subject") or {}).get("reference")
            ref = _entry_reference(entry, resource)
            if kind == "Observation":
                item: Any = _observation_readings(resource, ref, expr)
            elif _condition_active(resource):
                item = (set(_codes(resource.get("code"), None)), ref)
            else:
                continue
            unattached.append((subject, entry.get("fullUrl"), kind, item))
    if problems:
        raise FhirInputError(problems)
    if not index.patients:
        raise FhirInputError([Problem("required", "the Bundle holds no Patient", "Bundle.entry")])
    only = index.patients[0] if len(index.patients) == 1 else None
    for subject, referrer, kind, item in unattached:
        owner = index.resolve(subject, referrer)
        if owner is None and only is not None and not subject:
            owner = only
        if owner is None:
            continue
        if kind == "Observation":
            readings.setdefault(owner.entry, []).extend(item)
        else:
            conditions.setdefault(owner.entry, []).append(item)
    specs = {f.name: f for f in signature.inputs}
    ordered = index.patients
    for patient in ordered:
        context = _PatientContext(
            patient,
            resources[patient.entry],
            readings.get(patient.entry, []),
            conditions.get(patient.entry, []),
            as_of,
            fmap,
        )
        for name, source in fmap.features.items():
            if source.aggregate == "series":  # the records API's series, checked there
                series = patient.record.setdefault("series", {})
                series[name] = context.series(name, source, problems)
                patient.record["as_of"] = as_of.isoformat()
                continue
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

    def _in_window(self, source: FeatureSource) -> list[_Reading]:
        """The readings of ``source``'s codes in its look-back window (up to a day past as_of:
        what comes after as_of is refused by name, not silently dropped)."""
        codes = set(source.loinc or [])
        window_start = self.as_of - timedelta(days=self.fmap.lookback(source))
        window_end = self.as_of + timedelta(days=1)
        return [
            r
            for r in self.readings
            if r.code in codes and r.at is not None and window_start <= r.at <= window_end
        ]

    @staticmethod
    def _converted(
        name: str, source: FeatureSource, reading: _Reading, problems: list[Problem], rule: str = ""
    ) -> float | None:
        """The reading's value in the model's unit, or None with the problem appended (the
        conversion's words, cut: they quote the unit as sent)."""
        assert reading.value is not None
        try:
            return convert(reading.value, reading.unit, source.unit or "", reading.code)
        except UnitConversionError as exc:
            words = str(exc)
            words = words if len(words) <= _UNIT_WORDS else words[: _UNIT_WORDS - 1] + "…"
            problems.append(
                Problem(
                    "value",
                    f"feature {name!r}: LOINC {reading.code} unit {words}{rule}",
                    reading.expression,
                    name,
                )
            )
            return None

    def _observation(self, name: str, source: FeatureSource, problems: list[Problem]) -> Any:
        in_window = self._in_window(source)
        # a result without a value (dataAbsentReason, or none given) says nothing: skipped
        candidates = [r for r in in_window if r.kind != "absent"]
        label = "/".join(source.loinc or [])
        if not candidates:
            valueless = len(in_window)
            why = f" ({valueless} without a value)" if valueless else ""
            problems.append(
                Problem(
                    "required",
                    f"feature {name!r}: no Observation with a value for LOINC {label} for the "
                    f"patient in the last {self.fmap.lookback(source)} days{why}",
                    f"{self.expr}",
                    name,
                )
            )
            return None
        values: list[tuple[datetime, float, str, _Reading]] = []
        failed = False
        for reading in candidates:
            if reading.value is None:
                problems.append(
                    Problem(
                        "value",
                        f"feature {name!r}: the Observation at {_entry_of(reading.expression)} "
                        f"(LOINC {reading.code}) has a {reading.kind}; a valueQuantity in "
                        f"{source.unit} (or a unit convertible to it) is expected",
                        reading.expression,
                        name,
                    )
                )
                failed = True
                continue
            converted = self._converted(name, source, reading, problems)
            if converted is None:
                failed = True
                continue
            assert reading.at is not None
            values.append((reading.at, converted, reading.reference, reading))
        if failed or not values:
            return None
        bounded = self._bounded(source, values)
        if bounded is not None:
            problems.append(
                Problem(
                    "value",
                    f"feature {name!r}: the Observation at {_entry_of(bounded.expression)} "
                    f"(LOINC {bounded.code}) has valueQuantity.comparator "
                    f"'{bounded.comparator}': a bound, not an exact reading the model can use",
                    f"{bounded.expression}.comparator",
                    name,
                )
            )
            return None
        return self._aggregate(source, values)

    def series(self, name: str, source: FeatureSource, problems: list[Problem]) -> list[list[Any]]:
        """Every Observation with a value in the look-back window, oldest first, as the records
        API's ``[[time, value], ...]`` in the model's unit (the rules of a series, later than
        as_of included, are checked by the records decoder, which names the point)."""
        readings = sorted(
            (r for r in self._in_window(source) if r.kind != "absent"),
            key=lambda r: r.at or self.as_of,
        )
        points: list[list[Any]] = []
        for reading in readings:
            if reading.value is None or reading.comparator:
                what = (
                    f"valueQuantity.comparator '{reading.comparator}' (a bound)"
                    if reading.comparator
                    else f"a {reading.kind}"
                )
                problems.append(
                    Problem(
                        "value",
                        f"feature {name!r}: the Observation at {_entry_of(reading.expression)} "
                        f"(LOINC {reading.code}) has {what}; an exact valueQuantity is expected "
                        "(non_numeric)",
                        reading.expression,
                        name,
                    )
                )
                continue
            converted = self._converted(name, source, reading, problems, " (unit)")
            if converted is None:
                continue
            assert reading.at is not None
            self._use(reading.reference)
            points.append([reading.at.isoformat(), converted])
        return points

    @staticmethod
    def _bounded(
        source: FeatureSource, values: list[tuple[datetime, float, str, _Reading]]
    ) -> _Reading | None:
        """A reading with a comparator (``<0.5``) that the aggregate would use, if any: its
        number is a bound, and using it as exact (or skipping it for an older value) would
        misstate the patient, so the feature is refused instead."""
        values.sort(key=lambda v: v[0])
        if source.aggregate in ("latest", "earliest"):
            chosen = values[-1] if source.aggregate == "latest" else values[0]
            return chosen[3] if chosen[3].comparator else None
        return next((v[3] for v in values if v[3].comparator), None)

    def _aggregate(
        self, source: FeatureSource, values: list[tuple[datetime, float, str, _Reading]]
    ) -> float:
        values.sort(key=lambda v: v[0])
        if source.aggregate in ("latest", "earliest"):
            chosen = values[-1] if source.aggregate == "latest" else values[0]
            self._use(chosen[2])
            return chosen[1]
        for _, _, reference, _ in values:
            self._use(reference)
        numbers = [v[1] for v in values]
        if source.aggregate == "mean":
            return sum(numbers) / len(numbers)
        return min(numbers) if source.aggregate == "min" else max(numbers)

    def _use(self, reference: str) -> None:
        if reference not in self.patient.basis:
            self.patient.basis.append(reference)


_UNIT_WORDS = 160  # a unit conversion's words in a problem (they quote the unit as sent)


def _entry_of(expression: str) -> str:
    """``Bundle.entry[i]`` of an expression: names the Observation without quoting its id."""
    return expression.split(".resource", 1)[0]

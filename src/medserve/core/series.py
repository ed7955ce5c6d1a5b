"""Patient trajectories: series declared in a signature, their checks, and the features derived
from them, in one numpy implementation that training and every serving path share.

A series is a list of (time, value) measurements of one quantity (lactate, heart rate) before a
prediction time ``as_of``. Inside medserve a batch of series is held as padded arrays, oldest
measurement first: ``values`` and ``times`` of shape ``[n, max_length]`` (``times`` in seconds
*before* ``as_of``, so never an absolute date) and ``lengths`` of shape ``[n]``. Training builds
them from long-format data, the records API from ISO 8601 times, OIP v2 receives them as tensors
and FHIR from Observations; all end in :func:`check_padded` and :func:`series_features`, so a
feature computed at training equals the one computed when serving.

Why here (core) and in numpy: the serving path must not import pandas (a one-row DataFrame costs
more than the model), and the training and interop features may not import each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

SeriesStat = Literal[
    "mean",
    "min",
    "max",
    "std",
    "first",
    "last",
    "delta",
    "slope",
    "count",
    "time_since_last",
    "missing",
]
STATS: tuple[str, ...] = SeriesStat.__args__  # type: ignore[attr-defined]
SECONDS_PER_HOUR = 3600.0

# Stable rule names of a refused series (the 422's ``details[].rule``).
RULE_UNSORTED = "unsorted"
RULE_DUPLICATE = "duplicate_time"
RULE_AFTER_AS_OF = "after_as_of"
RULE_MAX_LENGTH = "max_length"
RULE_MAX_GAP = "max_gap"
RULE_UNIT = "unit"
RULE_NON_NUMERIC = "non_numeric"
RULE_TIME = "time_format"


class SeriesSpec(BaseModel):
    """One series a model takes, declared in its signature."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    unit: str | None = Field(
        default=None, description="UCUM unit the model was trained in; others are converted."
    )
    max_length: int = Field(ge=1, le=10_000, description="Most measurements accepted.")
    max_gap: float | None = Field(
        default=None,
        gt=0,
        description="Seconds: the longest gap allowed between two consecutive measurements.",
    )
    lookback: float | None = Field(
        default=None,
        gt=0,
        description="Seconds before as_of: older measurements are left out (not refused), as "
        "they were at training; max_length counts the measurements inside it.",
    )
    refuse_unsorted: bool = Field(
        default=True, description="Refuse times out of order (else they are sorted)."
    )
    refuse_duplicates: bool = Field(
        default=True, description="Refuse two measurements at the same time (else both count)."
    )
    description: str = ""


class SeriesFeature(BaseModel):
    """One model input derived from a series: a statistic over a look-back window.

    Units: ``slope`` is per hour, ``time_since_last`` in hours, ``count`` a number of
    measurements, ``missing`` 1 when the window holds none (every other statistic is then NaN,
    which the model's imputation handles).
    """

    model_config = ConfigDict(extra="forbid")

    series: str
    stat: SeriesStat
    window_hours: float | None = Field(
        default=None, gt=0, description="Look-back window before as_of; None: the whole series."
    )
    name: str | None = Field(default=None, description="Column name (default: derived).")

    @property
    def column(self) -> str:
        if self.name:
            return self.name
        window = f"_{self.window_hours:g}h" if self.window_hours is not None else ""
        return f"{self.series}_{self.stat}{window}"


class SeriesFeatureBlock(BaseModel):
    """The spec's shorthand: several statistics of one series over one window."""

    model_config = ConfigDict(extra="forbid")

    series: str
    stats: list[SeriesStat] = Field(min_length=1)
    window_hours: float | None = Field(default=None, gt=0)

    def expand(self) -> list[SeriesFeature]:
        return [
            SeriesFeature(series=self.series, stat=s, window_hours=self.window_hours)
            for s in self.stats
        ]


class SeriesDeclaration(BaseModel):
    """What a signature says about series; checked for consistency once, at load."""

    series: list[SeriesSpec]
    features: list[SeriesFeature]

    @model_validator(mode="after")
    def _consistent(self) -> SeriesDeclaration:
        names = [s.name for s in self.series]
        if len(set(names)) != len(names):
            raise ValueError("series names must be unique")
        unknown = sorted({f.series for f in self.features} - set(names))
        if unknown:
            raise ValueError(f"series_features name undeclared series: {', '.join(unknown)}")
        columns = [f.column for f in self.features]
        if len(set(columns)) != len(columns):
            raise ValueError("series_features columns must be unique")
        return self


# -- padded batches ---------------------------------------------------------------------------
@dataclass
class Padded:
    """One series for a batch: oldest first, padded at the end (padding is never read)."""

    values: np.ndarray  # float64 [n, width]
    times: np.ndarray  # float64 [n, width], seconds before as_of
    lengths: np.ndarray  # int64 [n]

    @property
    def mask(self) -> np.ndarray:
        width = self.values.shape[1]
        return np.arange(width)[None, :] < self.lengths[:, None]

    def to_width(self, width: int) -> Padded:
        """The same series padded (NaN) or cut (only padding is cut) to ``width``."""
        n, have = self.values.shape
        if have == width:
            return self
        values = np.full((n, width), np.nan)
        times = np.full((n, width), np.nan)
        k = min(have, width)
        values[:, :k] = self.values[:, :k]
        times[:, :k] = self.times[:, :k]
        return Padded(values, times, self.lengths.copy())


def pad(points: Sequence[Sequence[tuple[float, float]]], width: int) -> Padded:
    """Padded arrays from per-row ``(seconds before as_of, value)`` lists, oldest first, at
    least ``width`` wide (wider when a row is longer: the look-back then trims it, or its rule
    refuses it). Values are rounded to float32 first: what a FP32 tensor carries, so every
    path agrees."""
    n = len(points)
    width = max([width, *(len(row) for row in points)])
    values = np.full((n, width), np.nan)
    times = np.full((n, width), np.nan)
    lengths = np.zeros(n, dtype=np.int64)
    for i, row in enumerate(points):
        k = len(row)
        lengths[i] = k
        if k:
            block = np.asarray(row[:k], dtype=np.float64)
            times[i, :k] = block[:, 0]
            values[i, :k] = block[:, 1].astype(np.float32)
    return Padded(values, times, lengths)


def _problem(
    row: int | None, name: str, index: int | None, rule: str, message: str
) -> dict[str, Any]:
    where = f"point {index}: " if index is not None else ""
    return {
        "row": row,
        "field": f"series.{name}",
        "index": index,
        "rule": rule,
        "message": f"{where}{message} ({rule})",  # the rule by name in every protocol's text
    }


def check_padded(spec: SeriesSpec, padded: Padded) -> tuple[Padded, list[dict[str, Any]]]:
    """The rules every series passes, on padded arrays (the OIP v2 tensors, and the records and
    FHIR series once their times are made relative). Returns the series (sorted when unsorted
    ones are accepted) and the problems: each names the row, the series, the point and the rule.
    Vectorised, so a clean batch costs a few numpy calls."""
    problems: list[dict[str, Any]] = []
    padded = within_lookback(spec, padded)
    width = padded.values.shape[1]
    lengths = padded.lengths
    over = np.flatnonzero(lengths > spec.max_length)
    for i in over.tolist():
        problems.append(
            _problem(
                i,
                spec.name,
                spec.max_length,
                RULE_MAX_LENGTH,
                f"{int(lengths[i])} measurements, over the maximum of {spec.max_length}",
            )
        )
    mask = padded.mask
    times = np.where(mask & np.isfinite(padded.times), padded.times, 0.0)
    for i, k in zip(*np.nonzero(mask & ~np.isfinite(padded.values)), strict=True):
        problems.append(
            _problem(
                int(i), spec.name, int(k), RULE_NON_NUMERIC, "the value is not a finite number"
            )
        )
    bad_time = mask & ~np.isfinite(padded.times)
    for i, k in zip(*np.nonzero(bad_time), strict=True):
        problems.append(
            _problem(int(i), spec.name, int(k), RULE_TIME, "the time is not a finite number")
        )
    for i, k in zip(*np.nonzero(mask & (times < 0)), strict=True):
        problems.append(
            _problem(int(i), spec.name, int(k), RULE_AFTER_AS_OF, "the time is later than as_of")
        )
    if width > 1:
        # times are seconds before as_of: oldest first means strictly decreasing
        pair = mask[:, 1:]
        step = times[:, :-1] - times[:, 1:]  # > 0 when in order
        if spec.refuse_unsorted:
            for i, k in zip(*np.nonzero(pair & (step < 0)), strict=True):
                problems.append(
                    _problem(
                        int(i),
                        spec.name,
                        int(k) + 1,
                        RULE_UNSORTED,
                        "earlier than the point before it (times must be in ascending order)",
                    )
                )
        elif (pair & (step < 0)).any():  # accepted: sorted before the other rules look
            padded = _sorted(padded)
            times = np.where(padded.mask, padded.times, 0.0)
            step = times[:, :-1] - times[:, 1:]
        if spec.refuse_duplicates:  # (once sorted, two equal times are neighbours)
            for i, k in zip(*np.nonzero(pair & (step == 0)), strict=True):
                problems.append(
                    _problem(
                        int(i),
                        spec.name,
                        int(k) + 1,
                        RULE_DUPLICATE,
                        "at the same time as the point before it"
                        + ("" if spec.refuse_unsorted else " (in time order)"),
                    )
                )
        if spec.max_gap is not None:
            for i, k in zip(*np.nonzero(pair & (np.abs(step) > spec.max_gap)), strict=True):
                problems.append(
                    _problem(
                        int(i),
                        spec.name,
                        int(k) + 1,
                        RULE_MAX_GAP,
                        f"{abs(float(step[i, k])) / SECONDS_PER_HOUR:.6g} h after the point "
                        f"before it, over the maximum gap of "
                        f"{spec.max_gap / SECONDS_PER_HOUR:.6g} h",
                    )
                )

    return padded, problems


def within_lookback(spec: SeriesSpec, padded: Padded) -> Padded:
    """The series without its measurements older than ``spec.lookback`` (the others keep their
    order; a time that is not a number stays, for its rule to name it). Training and serving
    both call this, so the window a model learnt from is the one it is served."""
    if spec.lookback is None:
        return padded
    mask = padded.mask[:, : padded.values.shape[1]]
    with np.errstate(invalid="ignore"):
        keep = mask & ~(padded.times > spec.lookback)
    if (keep == mask).all():
        return padded
    order = np.argsort(~keep, axis=1, kind="stable")
    return Padded(
        np.take_along_axis(padded.values, order, axis=1),
        np.take_along_axis(padded.times, order, axis=1),
        keep.sum(axis=1).astype(np.int64),
    )


def _sorted(padded: Padded) -> Padded:
    """Each row's measurements oldest first (largest seconds-before first), padding last."""
    key = np.where(padded.mask, -padded.times, np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    return Padded(
        np.take_along_axis(padded.values, order, axis=1),
        np.take_along_axis(padded.times, order, axis=1),
        padded.lengths,
    )


# -- ISO 8601 points (records API, FHIR) --------------------------------------------------------
def parse_instant(text: Any) -> datetime | None:
    """An ISO 8601 date-time with an offset (``Z`` or ``+01:00``), else None: a time without
    an offset is ambiguous across a daylight-saving change or a site in another zone."""
    if not isinstance(text, str) or len(text) < 16 or len(text) > 40:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None and parsed.utcoffset() is not None else None


Converter = Callable[[float, str, str], float]
"""``convert(value, from_unit, to_unit)``: raises ``ValueError`` when it cannot (the serving
layer passes the FHIR unit table's; the core knows no units)."""


def points_from_json(
    spec: SeriesSpec,
    raw: Any,
    as_of: datetime,
    row: int,
    problems: list[dict[str, Any]],
    convert: Converter | None = None,
) -> list[tuple[float, float]]:
    """``[[time, value], ...]`` or ``[[time, value, unit], ...]`` (or ``{"unit": u, "points":
    [[time, value], ...]}``) as ``(seconds before as_of, value)`` pairs, in the order sent.
    Every problem found is appended; nothing here quotes a time or a value."""
    unit_all: Any = None
    if isinstance(raw, Mapping):
        unit_all = raw.get("unit")
        raw = raw.get("points")
    if not isinstance(raw, list):
        problems.append(
            _problem(
                row,
                spec.name,
                None,
                "shape",
                "a series is a list of [time, value] pairs (or {unit, points})",
            )
        )
        return []
    if len(raw) > spec.max_length and spec.lookback is None:  # else counted inside the window
        problems.append(
            _problem(
                row,
                spec.name,
                spec.max_length,
                RULE_MAX_LENGTH,
                f"{len(raw)} measurements, over the maximum of {spec.max_length}",
            )
        )
        return []
    out: list[tuple[float, float]] = []
    for k, point in enumerate(raw):
        if not isinstance(point, list | tuple) or len(point) not in (2, 3):
            problems.append(
                _problem(
                    row, spec.name, k, "shape", "each point is [time, value] or [time, value, unit]"
                )
            )
            continue
        at = parse_instant(point[0])
        if at is None:
            problems.append(
                _problem(
                    row,
                    spec.name,
                    k,
                    RULE_TIME,
                    "the time must be an ISO 8601 date-time with an offset "
                    "(e.g. 2026-03-01T08:00:00+01:00)",
                )
            )
            continue
        value = point[1]
        if type(value) is bool or not isinstance(value, int | float) or not math.isfinite(value):
            problems.append(
                _problem(row, spec.name, k, RULE_NON_NUMERIC, "the value must be a finite number")
            )
            continue
        unit = point[2] if len(point) == 3 else unit_all
        number = float(value)
        if unit is not None and spec.unit is not None and unit != spec.unit:
            try:
                if convert is None or not isinstance(unit, str):
                    raise ValueError("no conversion")
                number = convert(number, unit, spec.unit)
            except ValueError:
                problems.append(
                    _problem(
                        row,
                        spec.name,
                        k,
                        RULE_UNIT,
                        f"the unit cannot be converted to {spec.unit!r}",
                    )
                )
                continue
        out.append(((as_of - at).total_seconds(), number))
    return out


# -- features -----------------------------------------------------------------------------------
def series_features(features: Sequence[SeriesFeature], batch: Mapping[str, Padded]) -> np.ndarray:
    """The ``[n, len(features)]`` float64 matrix of derived features (NaN where a statistic is
    undefined: an empty window, a slope of fewer than two points). One implementation for
    training and serving: the parity a model relies on."""
    if not features:
        n = next(iter(batch.values())).lengths.shape[0] if batch else 0
        return np.empty((n, 0))
    columns = []
    cache: dict[tuple[str, float | None], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for feature in features:
        key = (feature.series, feature.window_hours)
        if key not in cache:
            padded = batch[feature.series]
            mask = padded.mask & np.isfinite(padded.values) & np.isfinite(padded.times)
            if feature.window_hours is not None:
                with np.errstate(invalid="ignore"):
                    mask &= padded.times <= feature.window_hours * SECONDS_PER_HOUR
            cache[key] = (padded.values, padded.times, mask)
        values, times, mask = cache[key]
        columns.append(_stat(feature.stat, values, times, mask))
    return np.column_stack(columns)


def _stat(stat: str, values: np.ndarray, times: np.ndarray, mask: np.ndarray) -> np.ndarray:
    count: np.ndarray = mask.sum(axis=1).astype(np.float64)
    some = count > 0
    if stat == "count":
        return count
    if stat == "missing":
        return np.asarray(~some, dtype=np.float64)
    v = np.where(mask, values, 0.0)
    hours = np.where(mask, -times / SECONDS_PER_HOUR, 0.0)  # hours relative to as_of (<= 0)
    out = np.full(count.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        if stat == "mean":
            out[some] = (v.sum(axis=1) / count)[some]
        elif stat == "std":
            mean = v.sum(axis=1) / np.maximum(count, 1)
            dev = np.where(mask, values - mean[:, None], 0.0)
            out[some] = np.sqrt((dev**2).sum(axis=1) / count)[some]
        elif stat == "min":
            out[some] = np.where(mask, values, np.inf).min(axis=1)[some]
        elif stat == "max":
            out[some] = np.where(mask, values, -np.inf).max(axis=1)[some]
        elif stat in ("first", "last", "delta", "time_since_last"):
            width = mask.shape[1]
            idx = np.arange(width)[None, :]
            first_k = np.where(mask, idx, width).min(axis=1)
            last_k = np.where(mask, idx, -1).max(axis=1)
            rows = np.flatnonzero(some)
            first = values[rows, first_k[rows]]
            last = values[rows, last_k[rows]]
            if stat == "first":
                out[rows] = first
            elif stat == "last":
                out[rows] = last
            elif stat == "delta":
                out[rows] = last - first
            else:
                out[rows] = times[rows, last_k[rows]] / SECONDS_PER_HOUR
        elif stat == "slope":
            n = count
            mean_x = hours.sum(axis=1) / np.maximum(n, 1)
            mean_y = v.sum(axis=1) / np.maximum(n, 1)
            dx = np.where(mask, hours - mean_x[:, None], 0.0)
            dy = np.where(mask, values - mean_y[:, None], 0.0)
            sxx = (dx * dx).sum(axis=1)
            sxy = (dx * dy).sum(axis=1)
            ok = (n >= 2) & (sxx > 0)
            out[ok] = (sxy / np.where(ok, sxx, 1.0))[ok]
        else:  # pragma: no cover - the Literal type lists every statistic
            raise ValueError(f"unknown statistic {stat!r}")
    return out


# -- the padded layout of the trajectory flavor ----------------------------------------------
def padded_columns(series: Sequence[SeriesSpec]) -> list[str]:
    """Column names of the trajectory layout, after the static inputs: per series its length,
    then its ``max_length`` values, then its times (seconds before as_of)."""
    names: list[str] = []
    for s in series:
        names.append(f"{s.name}.length")
        names.extend(f"{s.name}.value[{k}]" for k in range(s.max_length))
        names.extend(f"{s.name}.time[{k}]" for k in range(s.max_length))
    return names


def pack(series: Sequence[SeriesSpec], batch: Mapping[str, Padded]) -> np.ndarray:
    """The trajectory layout as one float64 matrix (padding zeroed, so it carries nothing)."""
    parts: list[np.ndarray] = []
    for s in series:
        padded = batch[s.name].to_width(s.max_length)
        mask = padded.mask
        parts.append(padded.lengths[:, None].astype(np.float64))
        parts.append(np.where(mask, padded.values, 0.0))
        parts.append(np.where(mask, padded.times, 0.0))
    return np.concatenate(parts, axis=1) if parts else np.empty((0, 0))


def unpack(layout: Sequence[tuple[str, int]], matrix: np.ndarray, start: int) -> dict[str, Padded]:
    """The inverse of :func:`pack` from column ``start``: ``layout`` is (name, max_length)."""
    out: dict[str, Padded] = {}
    j = start
    for name, width in layout:
        lengths = np.clip(np.rint(matrix[:, j]).astype(np.int64), 0, width)
        values = matrix[:, j + 1 : j + 1 + width].astype(np.float64)
        times = matrix[:, j + 1 + width : j + 1 + 2 * width].astype(np.float64)
        out[name] = Padded(values, times, lengths)
        j += 1 + 2 * width
    return out


@runtime_checkable
class TimeStepExplainer(Protocol):
    """A runtime that explains a prediction by time-step occlusion (the trajectory flavor). A
    protocol of its own, here (light to import), so the data plane recognises such a runtime
    without loading onnxruntime, and not by a duck-typed ``occlusion`` attribute, which the image
    runtime has with another signature."""

    def explain_time_steps(self, X: npt.NDArray[Any], target: int = -1) -> list[dict[str, Any]]: ...


def target_index(class_keys: list[str] | None, target: str | None) -> int:
    """The explained class's column for :meth:`TimeStepExplainer.explain_time_steps`: the asked
    class, else -1 (the last class: the positive one of a binary classifier)."""
    keys = class_keys or []
    return keys.index(target) if target is not None and target in keys else -1

"""Numbers, intervals, dates and labels formatted for people (clinicians, a governance committee).

The HTML that the CLI writes (model cards, evaluation and drift reports) and the web console
(``/ui``) both need the same words for the same numbers, and the features that write HTML may not
import each other: the shared formatting lives here. Nothing here knows HTML; ``core.charts``
draws the plots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

DASH = "\u2013"  # an en dash: what an absent number reads as

# How a metric's stored name reads to a clinician (the stored names stay the API's).
METRIC_LABELS: dict[str, str] = {
    "auroc": "AUROC (discrimination)",
    "auprc": "AUPRC (precision-recall area)",
    "auroc_macro_ovr": "AUROC (macro, one vs rest)",
    "brier": "Brier score (lower is better)",
    "calibration_slope": "Calibration slope (ideal 1)",
    "calibration_intercept": "Calibration intercept (ideal 0)",
    "oe_ratio": "Observed to expected ratio (ideal 1)",
    "observed_expected": "Observed to expected ratio (ideal 1)",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "Positive predictive value",
    "npv": "Negative predictive value",
    "accuracy": "Accuracy",
    "f1_macro": "F1 (macro)",
    "mae": "Mean absolute error",
    "rmse": "Root mean squared error",
    "r2": "R² (variance explained)",
    "concordance": "Concordance (C-index)",
    "prevalence": "Prevalence",
    "event_rate": "Event rate",
    "psi": "Population stability index",
    "psi_max": "Largest population stability index",
    "n": "Patients",
}

# Ordered bands of the population stability index, the usual reading (Yurdakul 2018).
PSI_BANDS: tuple[tuple[float, str], ...] = (
    (0.10, "stable"),
    (0.25, "moderate shift"),
    (math.inf, "major shift"),
)


def label(name: str) -> str:
    """A stored name (``calibration_slope``) as words (``Calibration slope (ideal 1)``)."""
    if name in METRIC_LABELS:
        return METRIC_LABELS[name]
    words = name.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:]


def number(value: Any, digits: int | None = None) -> str:
    """A number as a person reads it: ``0.5733351874927533`` -> ``0.57``, ``12345`` ->
    ``12,345``, ``0.00042`` -> ``0.00042``; booleans as yes/no; ``None`` and NaN as a dash.

    ``digits`` fixes the decimals; otherwise values below 10 keep two decimals (two significant
    figures below 0.01), values up to 100 one, larger ones none."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if not isinstance(value, float):
        try:
            value = float(value)
        except (TypeError, ValueError):
            return str(value)
    if math.isnan(value):
        return DASH
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if digits is not None:
        return f"{value:,.{digits}f}"
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude < 0.01:
        return f"{value:.2g}"
    if magnitude < 10:
        return f"{value:.2f}"
    if magnitude < 100:
        return f"{value:.1f}"
    return f"{round(value):,}"


def percent(value: Any, digits: int = 0) -> str:
    """A proportion (0.153) as a percentage (``15%``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{float(value) * 100:.{digits}f}%"


def interval(entry: Mapping[str, Any] | None, digits: int | None = None) -> str:
    """A stored metric ``{"value", "ci_low", "ci_high"}`` as ``0.71 (0.55 to 0.86)``."""
    if not entry or entry.get("value") is None:
        return DASH
    low, high = entry.get("ci_low"), entry.get("ci_high")
    parts = [v for v in (entry["value"], low, high) if isinstance(v, int | float) and v]
    if digits is None and any(abs(v) < 0.01 for v in parts):
        digits = 3  # one precision for the three numbers: 0.012 (0.004 to 0.020)
    text = number(entry["value"], digits)
    if low is not None and high is not None:
        text += f" ({number(low, digits)} to {number(high, digits)})"
    return text


def psi_band(value: float | None) -> str:
    """The band of a PSI: ``stable`` (< 0.10), ``moderate shift``, ``major shift`` (>= 0.25)."""
    if value is None or math.isnan(value):
        return "no data"
    for upper, name in PSI_BANDS:
        if value < upper:
            return name
    return PSI_BANDS[-1][1]


def as_datetime(value: Any) -> datetime | None:
    """A stored time (a datetime or ISO 8601 text) as an aware UTC datetime, else None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        found = value
    else:
        try:
            found = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return found.replace(tzinfo=UTC) if found.tzinfo is None else found.astimezone(UTC)


def when(value: Any, *, seconds: bool = False) -> str:
    """A time as ``6 Dec 2026 09:26 UTC`` (never microseconds)."""
    found = as_datetime(value)
    if found is None:
        return DASH if value is None else str(value)
    text = f"{found.day} {found:%b %Y %H:%M}"
    return f"{text}:{found:%S} UTC" if seconds else f"{text} UTC"


def day(value: Any) -> str:
    """A date as ``6 Dec 2026``."""
    found = as_datetime(value)
    return DASH if found is None else f"{found.day} {found:%b %Y}"


def duration(seconds: float | None) -> str:
    """A length of time in the largest whole unit that reads well (``3 days``, ``90 min``)."""
    if seconds is None:
        return DASH
    for size, unit in ((86_400, "day"), (3_600, "hour"), (60, "min")):
        if seconds >= size * 2 or (seconds >= size and seconds % size == 0):
            count = seconds / size
            shown = str(int(count)) if count.is_integer() else f"{count:.1f}"
            plural = "s" if unit != "min" and count != 1 else ""
            return f"{shown} {unit}{plural}"
    return f"{number(seconds)} s"

"""Survival metrics: Harrell's concordance, IPCW time-dependent Brier score and AUC, and
calibration against Kaplan-Meier observed risk.

Censoring is handled by inverse probability of censoring weights from the Kaplan-Meier estimate
of the censoring distribution (Graf et al. 1999 for the Brier score; Uno et al. 2007 for the
cumulative/dynamic AUC). Without censoring both reduce to the plain Brier score and AUROC of
"event by the horizon", which the tests check against scikit-learn.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def concordance(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C: higher risk should mean earlier events (lifelines' implementation).

    NaN when no pair is comparable (no event, or every event after every other time), which a
    bootstrap resample of a small subgroup meets; lifelines raises ZeroDivisionError there."""
    # lazy import (heavy: lifelines, kept off the serving path)
    from lifelines.utils import concordance_index  # noqa: PLC0415

    try:
        return float(concordance_index(time, -risk, event))
    except ZeroDivisionError:  # "No admissable pairs in the dataset."
        return math.nan


def horizon_outcome(
    time: np.ndarray, event: np.ndarray, horizon: float
) -> tuple[np.ndarray, np.ndarray]:
    """'Event by the horizon' from time and event, the one rule that training's derived label
    and the evaluation of a horizon version both follow: ``unknown`` marks the rows censored
    before the horizon (no label: they are excluded and counted, since taking them as
    event-free would bias risks down); ``by_horizon``, over the other rows, whether the event
    came by the horizon (an event after it counts as 0)."""
    unknown = (event == 0) & (time < horizon)
    by_horizon = (event[~unknown] == 1) & (time[~unknown] <= horizon)
    return unknown, by_horizon


def km_risk_at(time: np.ndarray, event: np.ndarray, horizon: float) -> float:
    """Observed risk by ``horizon``: 1 - the Kaplan-Meier survival there (censoring-aware)."""
    event_times = np.unique(time[(event == 1) & (time <= horizon)])
    if len(time) == 0:
        return math.nan
    if len(event_times) == 0:
        return 0.0
    at_risk = np.sum(time[None, :] >= event_times[:, None], axis=1).astype(float)
    deaths = np.sum((time[None, :] == event_times[:, None]) & (event[None, :] == 1), axis=1)
    return float(1.0 - np.prod(1.0 - deaths / at_risk))


def oe_at(time: np.ndarray, event: np.ndarray, surv_at_t: np.ndarray, horizon: float) -> float:
    """Observed (Kaplan-Meier) over expected (mean predicted) risk by ``horizon``: 1 when the
    average predicted risk is right."""
    expected = float(np.mean(1.0 - surv_at_t))
    return km_risk_at(time, event, horizon) / expected if expected > 0 else math.nan


def calibration_at(
    time: np.ndarray, event: np.ndarray, surv_at_t: np.ndarray, horizon: float, groups: int
) -> list[dict[str, float]]:
    """Predicted risk against Kaplan-Meier observed risk by ``horizon``, within ``groups``
    quantile groups of predicted risk (Royston & Altman 2013): the survival calibration plot."""
    risk = 1.0 - surv_at_t
    order = np.argsort(risk, kind="stable")
    rows = []
    for number, chunk in enumerate(np.array_split(order, min(groups, max(1, len(risk)))), 1):
        if len(chunk) == 0:
            continue
        rows.append(
            {
                "group": number,
                "n": len(chunk),
                "events_by_horizon": int(np.sum((event[chunk] == 1) & (time[chunk] <= horizon))),
                "predicted": round(float(np.mean(risk[chunk])), 6),
                "observed": round(km_risk_at(time[chunk], event[chunk], horizon), 6),
            }
        )
    return rows


def censoring_survival(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier of the censoring distribution: (distinct times, G(t) just after each)."""
    censored = 1 - event.astype(int)
    times = np.unique(time)
    at_risk = np.array([np.sum(time >= t) for t in times], dtype=float)
    d = np.array([np.sum((time == t) & (censored == 1)) for t in times], dtype=float)
    surv = np.cumprod(1.0 - np.divide(d, at_risk, out=np.zeros_like(d), where=at_risk > 0))
    return times, surv


def _g_at(times: np.ndarray, surv: np.ndarray, t: np.ndarray, *, left: bool) -> np.ndarray:
    """G(t) (or G(t-) with ``left``) as a step function."""
    idx = np.searchsorted(times, t, side="left" if left else "right") - 1
    out = np.where(idx >= 0, surv[np.clip(idx, 0, None)], 1.0)
    return np.asarray(np.clip(out, 1e-8, None))


def brier_at(time: np.ndarray, event: np.ndarray, surv_at_t: np.ndarray, horizon: float) -> float:
    """Graf's IPCW Brier score at ``horizon`` for predicted S(horizon | x)."""
    times, g = censoring_survival(time, event)
    had_event = (time <= horizon) & (event == 1)
    still = time > horizon
    w_event = 1.0 / _g_at(times, g, time, left=True)
    w_still = 1.0 / float(_g_at(times, g, np.array([horizon]), left=False)[0])
    terms = had_event * surv_at_t**2 * w_event + still * (1 - surv_at_t) ** 2 * w_still
    return float(np.mean(terms))


def auc_at(time: np.ndarray, event: np.ndarray, risk: np.ndarray, horizon: float) -> float:
    """Cumulative/dynamic AUC at ``horizon``: events by then vs those still event-free."""
    cases = (time <= horizon) & (event == 1)
    controls = time > horizon
    if not cases.any() or not controls.any():
        return math.nan
    times, g = censoring_survival(time, event)
    w = 1.0 / _g_at(times, g, time[cases], left=True)
    r_case = risk[cases][:, None]
    r_ctrl = risk[controls][None, :]
    wins = (r_case > r_ctrl).astype(float) + 0.5 * (r_case == r_ctrl)
    return float(np.sum(w[:, None] * wins) / (np.sum(w) * controls.sum()))


def survival_from_risk(
    risk: np.ndarray, baseline: dict[str, Any], horizons: list[float]
) -> dict[float, np.ndarray]:
    """S(h | x) = exp(-H0(h) exp(coefficient * risk)) from a served risk score and the
    baseline recorded at training (``{coefficient, times, cumulative_hazard}``, a step
    function; past its last time it stays at its last value)."""
    times = np.asarray(baseline["times"], dtype=float)
    cumhaz = np.asarray(baseline["cumulative_hazard"], dtype=float)
    coef = float(baseline["coefficient"])
    out = {}
    for h in horizons:
        k = int(np.searchsorted(times, h, side="right")) - 1
        h0 = float(cumhaz[k]) if k >= 0 else 0.0
        out[h] = np.exp(-h0 * np.exp(coef * np.asarray(risk, dtype=float)))
    return out

"""Survival metrics: Harrell's concordance, and IPCW time-dependent Brier score and AUC.

Censoring is handled by inverse probability of censoring weights from the Kaplan-Meier estimate
of the censoring distribution (Graf et al. 1999 for the Brier score; Uno et al. 2007 for the
cumulative/dynamic AUC). Without censoring both reduce to the plain Brier score and AUROC of
"event by the horizon", which the tests check against scikit-learn.
"""

from __future__ import annotations

import math

import numpy as np


def concordance(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C: higher risk should mean earlier events (lifelines' implementation)."""
    # lazy import (heavy: lifelines, kept off the serving path)
    from lifelines.utils import concordance_index  # noqa: PLC0415

    return float(concordance_index(time, -risk, event))


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

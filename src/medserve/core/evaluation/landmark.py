"""Landmark evaluation of a survival model with time-varying covariates.

A Cox model with time-varying covariates (long format: one row per patient and interval with
constant covariates) gives no survival function per patient, because it would need the
covariates' future. Landmarking asks a question that has an answer: for the patients still at
risk at a landmark time ``s``, with the covariates known at ``s``, how well does the risk order
and predict events in ``(s, s + h]``? (van Houwelingen 2007.) Residual times are measured from
``s`` and administratively censored at ``h``; concordance, the IPCW cumulative/dynamic AUC and
the IPCW Brier score at ``h`` are then the ordinary survival metrics of ``core.evaluation``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from medserve.core.evaluation.survival_metrics import auc_at, brier_at, concordance


@dataclass(frozen=True)
class Landmark:
    """The patients at risk at ``s``: their row index (the interval covering ``s``), residual
    time from ``s`` and final event."""

    s: float
    rows: np.ndarray
    residual: np.ndarray
    event: np.ndarray
    patients: np.ndarray


def at_landmark(
    ids: np.ndarray, start: np.ndarray, stop: np.ndarray, event: np.ndarray, s: float
) -> Landmark:
    """Patients whose follow-up goes past ``s`` (alive and observed at ``s``), each with the
    interval that covers ``s`` (its covariates are those known at ``s``), in patient order.
    Vectorised over the sorted rows (one pass, not one scan per patient): long-format data of
    a real cohort has hundreds of thousands of intervals."""
    n = len(ids)
    if n == 0:
        empty = np.empty(0)
        return Landmark(s, empty.astype(np.intp), empty, empty.astype(int), np.asarray(ids))
    order = np.lexsort((start, ids))  # by patient, then by interval start
    pid, t0, t1 = ids[order], start[order], stop[order]
    first = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]])  # each patient's first row
    group = np.repeat(np.arange(len(first)), np.diff(np.r_[first, n]))
    end = np.maximum.reduceat(t1, first)  # end of follow-up
    position = np.arange(n)
    beyond = n  # "no such row" in a minimum over positions
    covering = (t0 <= s) & (s < t1)
    cover_at = np.minimum.reduceat(np.where(covering, position, beyond), first)
    last_at = np.minimum.reduceat(np.where(t1 == end[group], position, beyond), first)
    # at risk: follow-up past s, and an interval covering s (else a late entry, not observed)
    keep = (end > s) & (cover_at < beyond)
    return Landmark(
        s,
        order[cover_at[keep]].astype(np.intp),
        (end[keep] - s).astype(float),
        event[order[last_at[keep]]].astype(int),
        pid[first[keep]],
    )


def landmark_metrics(
    landmark: Landmark, risk: np.ndarray, survival_h: np.ndarray, horizon: float
) -> dict[str, Any]:
    """Concordance, AUC(h) and Brier(h) of ``risk`` (higher = earlier event) and the predicted
    probability of being event-free at ``s + h`` among the patients at risk at ``s``."""
    # an event after s + h is no event of this window (its patient is a control at h)
    event = ((landmark.event == 1) & (landmark.residual <= horizon)).astype(int)
    time = landmark.residual
    truncated = np.minimum(time, horizon)  # Harrell's C within the window
    n_events = int(event.sum())

    def clean(value: float) -> float | None:
        return round(float(value), 6) if math.isfinite(value) else None

    return {
        "landmark": landmark.s,
        "horizon": horizon,
        "at_risk": len(time),
        "events_in_window": n_events,
        "concordance": clean(concordance(truncated, event, risk)) if n_events else None,
        "auc": clean(auc_at(time, event, risk, horizon)) if n_events else None,
        "brier": clean(brier_at(time, event, survival_h, horizon)) if len(time) else None,
    }

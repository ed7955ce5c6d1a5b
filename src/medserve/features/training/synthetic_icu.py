"""SYNTHETIC ICU trajectories (no real patient): a documented generator for demos and tests.

Every value here is made up by a random generator: it is not clinical data and a model trained
on it predicts nothing about real patients. It exists so that the trajectory machinery (series
inputs, series features, prediction times, horizon labels, patient-and-time splits) can be run
and tested from a fresh clone, with a signal shaped like the one early-warning scores look for.

What it generates (``generate(n_stays, seed)``):

* ``stays``: one row per ICU stay: ``stay``, ``patient`` (about 15% of patients have two
  stays), ``admit_time`` (hours since the start of a synthetic year, for the time split),
  ``los_hours`` (observed length, 24-120 h), ``age`` (whole years), ``deteriorated`` (0/1) and
  ``event_time`` (hours after admission; NaN without an event). A stay ends at its event.
* ``measurements`` (long format): ``stay``, ``time`` (hours after admission, whole minutes),
  ``variable``, ``value``. Heart rate (/min) and respiratory rate (/min) about hourly with gaps,
  lactate (mmol/L) every 4-8 h, systolic blood pressure (mm[Hg]) about every 2 h.

Physiologically plausible drift before deterioration (about a quarter of stays): over the
8-16 h before the event heart rate climbs by 20-35 /min, respiratory rate by 6-10 /min and
lactate from a baseline near 1.2 mmol/L towards 3.5-5, while systolic pressure falls by 15-30
mm[Hg] (compensated shock, then sepsis-like decompensation). Stable stays vary around a
personal baseline with a circadian swing and measurement noise; older patients run a slightly
higher baseline heart rate. Older age raises the chance of deterioration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

SYNTHETIC_NOTICE = "SYNTHETIC data (medserve's ICU trajectory generator): not real patients"
VARIABLES = {
    "heart_rate": "/min",
    "resp_rate": "/min",
    "lactate": "mmol/L",
    "sbp": "mm[Hg]",
}


def generate(n_stays: int = 300, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(stays, measurements)``: see the module docstring. Deterministic for a seed."""
    import pandas as pd  # noqa: PLC0415 (training and demo only)

    rng = np.random.default_rng(seed)
    stays: list[dict[str, object]] = []
    rows: list[tuple[int, float, str, float]] = []
    patient = 0
    for stay in range(n_stays):
        if stay == 0 or rng.random() > 0.15:
            patient += 1
            age = float(round(np.clip(rng.normal(64, 14), 18, 95)))
        los = float(rng.uniform(24, 120))
        risk = 1 / (1 + np.exp(-(-1.6 + 0.03 * (age - 64))))
        deteriorates = bool(rng.random() < risk)
        event_time = float(rng.uniform(14, los)) if deteriorates else float("nan")
        end = event_time if deteriorates else los
        onset = event_time - float(rng.uniform(8, 16)) if deteriorates else float("inf")
        base = {
            "heart_rate": rng.normal(82 + 0.1 * (age - 64), 8),
            "resp_rate": rng.normal(17, 2),
            "lactate": abs(rng.normal(1.2, 0.3)) + 0.4,
            "sbp": rng.normal(122, 12),
        }
        rise = {
            "heart_rate": rng.uniform(20, 35),
            "resp_rate": rng.uniform(6, 10),
            "lactate": rng.uniform(2.2, 3.8),
            "sbp": -rng.uniform(15, 30),
        }
        noise = {"heart_rate": 4.0, "resp_rate": 1.5, "lactate": 0.15, "sbp": 6.0}
        every = {"heart_rate": 1.0, "resp_rate": 1.0, "lactate": 6.0, "sbp": 2.0}
        for variable in VARIABLES:
            t = float(rng.uniform(0, every[variable]))
            while t < end:
                if rng.random() > 0.12:  # a missed measurement now and then
                    drift = 0.0
                    if t > onset:
                        drift = rise[variable] * min(1.0, (t - onset) / (event_time - onset)) ** 1.5
                    circadian = (
                        3.0 * np.sin(2 * np.pi * t / 24) if variable == "heart_rate" else 0.0
                    )
                    value = base[variable] + drift + circadian + rng.normal(0, noise[variable])
                    if variable == "lactate":
                        value = max(0.3, value)
                    rows.append((stay, round(t * 60) / 60, variable, round(float(value), 2)))
                step = every[variable] * (rng.uniform(0.7, 1.3) if variable != "lactate" else 1)
                if variable == "lactate":
                    step = float(rng.uniform(4, 8))
                t += step
        stays.append(
            {
                "stay": stay,
                "patient": f"P{patient:05d}",
                "admit_time": float(rng.uniform(0, 365 * 24)),
                "los_hours": end,
                "age": age,
                "deteriorated": int(deteriorates),
                "event_time": event_time,
            }
        )
    measurements = pd.DataFrame(rows, columns=["stay", "time", "variable", "value"])
    measurements = measurements.drop_duplicates(["stay", "variable", "time"])
    measurements = measurements.sort_values(["stay", "variable", "time"]).reset_index(drop=True)
    return pd.DataFrame(stays), measurements

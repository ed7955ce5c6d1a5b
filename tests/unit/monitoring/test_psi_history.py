"""The PSI history chart (the HTML report's and the console's): one point per run with a
verdict, placed at the run's stored window end on a date axis."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from medserve.features.monitoring.report import psi_history_chart


def _run(hour: int, psi: float, *, enough: bool = True) -> dict[str, Any]:
    end = datetime(2026, 12, 6, hour, tzinfo=UTC)
    return {
        "window_end": end,
        # a run body whose own window says otherwise: the stored column wins
        "window": {"n": 300, "end": datetime(2026, 12, 6, 23, tzinfo=UTC).isoformat()},
        "drift": {"enough_data": enough, "summary": {"psi_max": psi}},
    }


def test_one_point_per_run_with_a_verdict_at_its_window_end() -> None:
    runs = [_run(11, 0.3), _run(10, 0.9, enough=False), _run(9, 0.2), _run(8, 0.05)]
    svg = psi_history_chart(runs, 0.25)  # newest first, as the store lists them
    xs = [float(x) for x in re.findall(r'<circle cx="([0-9.]+)"', svg)]
    assert len(xs) == 3  # the run without enough data is not a point
    assert xs == sorted(xs)
    assert len(set(xs)) == 3  # three different times, not one
    assert "6 Dec 08:00" in svg
    assert "alert 0.25" in svg
    assert "moderate shift 0.10" in svg

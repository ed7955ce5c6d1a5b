"""Numbers, intervals, dates and plots formatted for people (core.presentation, core.charts)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from medserve.core import charts
from medserve.core.presentation import (
    DASH,
    duration,
    interval,
    label,
    number,
    percent,
    psi_band,
    when,
)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.5733351874927533, "0.57"),
        (1.0, "1.00"),
        (0.00042, "0.00042"),
        (3.14159, "3.14"),
        (42.123, "42.1"),
        (12345.6, "12,346"),
        (12345, "12,345"),
        (True, "yes"),
        (None, DASH),
        (float("nan"), DASH),
        (-0.7123, "-0.71"),
    ],
)
def test_numbers_read_as_people_write_them(value: object, shown: str) -> None:
    assert number(value) == shown


def test_intervals_read_as_value_and_range() -> None:
    assert interval({"value": 0.712, "ci_low": 0.551, "ci_high": 0.861}) == "0.71 (0.55 to 0.86)"
    assert interval({"value": 0.712}) == "0.71"
    small = {"value": 0.0123, "ci_low": 0.0042, "ci_high": 0.02}
    assert interval(small) == "0.012 (0.004 to 0.020)"
    assert interval(None) == DASH
    assert percent(0.153) == "15%"


def test_psi_bands_are_ordered() -> None:
    assert [psi_band(v) for v in (0.02, 0.1, 0.2, 0.25, 1.3)] == [
        "stable",
        "moderate shift",
        "moderate shift",
        "major shift",
        "major shift",
    ]


def test_times_have_no_microseconds_and_labels_are_words() -> None:
    at = datetime(2026, 12, 6, 9, 26, 35, 123456, tzinfo=UTC)
    assert when(at) == "6 Dec 2026 09:26 UTC"
    assert when("2026-12-06T09:26:35.123456+00:00", seconds=True) == "6 Dec 2026 09:26:35 UTC"
    assert label("calibration_slope") == "Calibration slope (ideal 1)"
    assert label("age_band") == "Age band"
    assert duration(7200) == "2 hours"


def test_time_series_has_a_date_axis_and_no_inline_style() -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    points = [(start + timedelta(days=d), 0.05 * d) for d in range(6)]
    svg = charts.line_chart(
        "PSI over time",
        [charts.Series("largest PSI", list(points))],
        lines=[charts.Line(0.25, "a")],
    )
    assert svg.startswith("<svg")
    assert svg.endswith("</svg>")
    assert "date (UTC)" in svg
    assert re.search(r">\d{1,2} Dec<", svg)  # day ticks, not timestamps
    assert "style=" not in svg
    assert 'role="img"' in svg
    assert 'aria-label="PSI over time"' in svg
    assert svg.count("<circle") == 6


def test_calibration_and_roc_plots_draw_the_reference_diagonal() -> None:
    calibration = charts.calibration_plot([(0.1, 0.12), (0.5, 0.45), (0.9, 0.93)])
    roc = charts.roc_plot([0.0, 0.1, 0.3, 1.0], [0.0, 0.6, 0.9, 1.0])
    for svg in (calibration, roc):
        assert svg.count("<polyline") == 2  # the model and the diagonal
        assert 'stroke-dasharray="5 4"' in svg
    assert "no data yet" in charts.line_chart("empty", [])


def test_bars_mark_the_threshold_and_colour_breaches() -> None:
    svg = charts.bar_chart("PSI", [("a", 0.4), ("b", 0.1)], threshold=0.25)
    assert svg.count(charts.ALERT) >= 2  # the breaching bar and the threshold line
    assert charts.ALERT not in charts.bar_chart("PSI", [("a", 0.4)])


def test_chart_text_is_escaped() -> None:
    """Feature and series names are the author's text, and the console inserts the SVG as
    markup: every label must be escaped."""
    hostile = '<script>alert("x")</script>'
    at = datetime(2026, 12, 6, tzinfo=UTC)
    drawn = [
        charts.bar_chart(hostile, [(hostile, 0.3)], threshold=0.25),
        charts.line_chart(hostile, [charts.Series(hostile, [(at, 0.1)])], y_label=hostile),
        charts.colour_scale(hostile, ["#000000", "#ffffff"], hostile, hostile),
    ]
    for svg in drawn:
        assert "<script" not in svg
        assert "&lt;script&gt;" in svg

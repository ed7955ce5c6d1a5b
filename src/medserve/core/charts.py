"""Plots as inline SVG text: time series with date axes, calibration and ROC curves, bars with
a threshold, a colour-scale legend.

Why hand-written: the pages that show them (the console, the HTML the CLI writes) must work
offline and under a strict Content-Security-Policy, so no JavaScript plotting library; and
matplotlib is an optional extra that a server does not load. Only SVG presentation attributes
are used (no ``style`` attribute), which a ``style-src 'self'`` policy allows. Every chart has a
``<title>`` and ``role="img"`` with a label, for screen readers.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from medserve.core.presentation import as_datetime, number

PALETTE = ("#1f5fa8", "#c2410c", "#15803d", "#7e22ce", "#a16207", "#0f766e")
ALERT = "#b91c1c"
GRID = "#d4d4d8"
INK = "#27272a"
_W, _H = 640, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 44, 34, 48


@dataclass
class Series:
    """One line: ``points`` are (x, y); x is a number or a time."""

    name: str
    points: list[tuple[float | datetime, float]]
    dashed: bool = False
    markers: bool = True


@dataclass
class Line:
    """A horizontal reference line (a threshold) with its label."""

    y: float
    label: str
    colour: str = ALERT


@dataclass
class _Scale:
    low: float
    high: float
    start: float
    end: float
    ticks: list[float] = field(default_factory=list)

    def __call__(self, value: float) -> float:
        span = self.high - self.low or 1.0
        return self.start + (value - self.low) / span * (self.end - self.start)


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 0.5:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _time_ticks(low: datetime, high: datetime) -> tuple[list[datetime], str]:
    """Tick times at a round unit for the span, and the strftime format their labels use."""
    span = (high - low).total_seconds()
    steps: tuple[tuple[float, str], ...] = (
        (60, "%H:%M"),
        (300, "%H:%M"),
        (900, "%H:%M"),
        (3600, "%d %b %H:%M"),
        (6 * 3600, "%d %b %H:%M"),
        (86_400, "%d %b"),
        (7 * 86_400, "%d %b"),
        (30 * 86_400, "%b %Y"),
        (365 * 86_400, "%Y"),
    )
    step, fmt = next(((s, f) for s, f in steps if span / s <= 6), steps[-1])
    epoch = low.timestamp()
    start = math.ceil(epoch / step) * step
    ticks = []
    value = start
    while value <= high.timestamp():
        ticks.append(datetime.fromtimestamp(value, UTC))
        value += step
    if not ticks:
        ticks = [low]
    return ticks, fmt


def _frame(title: str, description: str, width: int, height: int) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_esc(title)}" '
        f'class="chart" font-family="system-ui, sans-serif" font-size="12">',
        f"<title>{_esc(title)}</title><desc>{_esc(description)}</desc>",
        f'<text x="{_LEFT}" y="20" font-size="14" font-weight="bold" fill="{INK}">'
        f"{_esc(title)}</text>",
    ]


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    x_label: str = "",
    y_label: str = "",
    lines: Sequence[Line] = (),
    y_range: tuple[float, float] | None = None,
    x_range: tuple[float, float] | None = None,
    width: int = _W,
    height: int = _H,
    square: bool = False,
) -> str:
    """An SVG line chart. When the x values are times the x axis is a date axis."""
    points = [p for s in series for p in s.points]
    dated = bool(points) and isinstance(points[0][0], datetime)
    description = f"{len(series)} series, {len(points)} points"
    if not points:  # a short box that says so, not an empty plot area
        parts = _frame(title, description, width, 60)
        parts.append(f'<text x="{_LEFT}" y="46" fill="{INK}">no data yet</text></svg>')
        return "".join(parts)
    parts = _frame(title, description, width, height)
    if square:
        plot = min(width - _LEFT - _RIGHT, height - _TOP - _BOTTOM)
        x_end, y_end = _LEFT + plot, _TOP + plot
    else:
        x_end, y_end = width - _RIGHT, height - _BOTTOM

    def xnum(value: float | datetime) -> float:
        found = as_datetime(value) if isinstance(value, datetime) else None
        return found.timestamp() if found is not None else float(value)  # type: ignore[arg-type]

    xs = [xnum(x) for x, _ in points]
    ys = [float(y) for _, y in points if y is not None and math.isfinite(float(y))]
    ys += [line.y for line in lines]
    if y_range is not None:
        y_low, y_high = y_range
    else:
        y_low, y_high = min(ys or [0.0]), max(ys or [1.0])
        pad = (y_high - y_low) * 0.08 or abs(y_high) * 0.1 or 1.0
        floor = 0.0 if y_low >= 0 else -math.inf  # no negative axis for values that are not
        y_low, y_high = max(floor, y_low - pad), y_high + pad
    y_ticks = nice_ticks(y_low, y_high)
    if y_range is None:
        y_low, y_high = max(floor, min(y_low, y_ticks[0])), max(y_high, y_ticks[-1])
    y = _Scale(y_low, y_high, y_end, _TOP)
    if x_range is not None:
        x_low, x_high = x_range
    else:
        x_low, x_high = min(xs), max(xs)
        if x_high == x_low:
            pad = 3600.0 if dated else 1.0
            x_low, x_high = x_low - pad, x_high + pad
    x = _Scale(x_low, x_high, _LEFT, x_end)

    # grid, y ticks
    for tick in y_ticks:
        if y_low - 1e-12 <= tick <= y_high + 1e-12:
            ty = y(tick)
            parts.append(
                f'<line x1="{_LEFT}" y1="{ty:.1f}" x2="{x_end}" y2="{ty:.1f}" stroke="{GRID}"/>'
                f'<text x="{_LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end" fill="{INK}">'
                f"{_esc(number(tick))}</text>"
            )
    # x ticks
    if dated:
        low_dt = datetime.fromtimestamp(x_low, UTC)
        high_dt = datetime.fromtimestamp(x_high, UTC)
        ticks, fmt = _time_ticks(low_dt, high_dt)
        x_ticks = [(t.timestamp(), t.strftime(fmt).lstrip("0")) for t in ticks]
    else:
        x_ticks = [(t, number(t)) for t in nice_ticks(x_low, x_high) if x_low <= t <= x_high]
    for value, text in x_ticks:
        tx = x(value)
        parts.append(
            f'<line x1="{tx:.1f}" y1="{y_end}" x2="{tx:.1f}" y2="{y_end + 5}" stroke="{INK}"/>'
            f'<text x="{tx:.1f}" y="{y_end + 18}" text-anchor="middle" fill="{INK}">'
            f"{_esc(text)}</text>"
        )
    parts.append(
        f'<line x1="{_LEFT}" y1="{y_end}" x2="{x_end}" y2="{y_end}" stroke="{INK}"/>'
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{y_end}" stroke="{INK}"/>'
    )
    if x_label or dated:
        text = x_label or "date (UTC)"
        parts.append(
            f'<text x="{(_LEFT + x_end) / 2}" y="{y_end + 36}" text-anchor="middle" '
            f'fill="{INK}">{_esc(text)}</text>'
        )
    if y_label:
        cy = (_TOP + y_end) / 2
        parts.append(
            f'<text x="14" y="{cy}" text-anchor="middle" fill="{INK}" '
            f'transform="rotate(-90 14 {cy})">{_esc(y_label)}</text>'
        )
    for i, line in enumerate(lines):
        ly = y(line.y)
        # labels alternate between the right and the middle, so close lines stay readable
        lx, anchor = (x_end - 4, "end") if i % 2 == 0 else ((_LEFT + x_end) / 2, "middle")
        parts.append(
            f'<line x1="{_LEFT}" y1="{ly:.1f}" x2="{x_end}" y2="{ly:.1f}" '
            f'stroke="{line.colour}" stroke-dasharray="6 4"/>'
            f'<text x="{lx:.1f}" y="{ly - 5:.1f}" text-anchor="{anchor}" fill="{line.colour}">'
            f"{_esc(line.label)}</text>"
        )
    for i, s in enumerate(series):
        colour = "#71717a" if s.dashed else PALETTE[i % len(PALETTE)]
        coords = [
            (x(xnum(px)), y(float(py)))
            for px, py in s.points
            if py is not None and math.isfinite(float(py))
        ]
        if not coords:
            continue
        path = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
        dash = ' stroke-dasharray="5 4"' if s.dashed else ""
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}>'
            f"<title>{_esc(s.name)}</title></polyline>"
        )
        if s.markers and len(coords) <= 60:
            for (cx, cy), (px, py) in zip(coords, s.points, strict=False):
                shown = px.strftime("%d %b %Y %H:%M") if isinstance(px, datetime) else number(px)
                parts.append(
                    f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{colour}">'
                    f"<title>{_esc(s.name)}: {_esc(shown)}, {_esc(number(py))}</title></circle>"
                )
    # legend
    lx = _LEFT + 8
    for i, s in enumerate(series):
        colour = "#71717a" if s.dashed else PALETTE[i % len(PALETTE)]
        ly = _TOP + 12 + i * 16
        parts.append(
            f'<rect x="{lx}" y="{ly - 9}" width="12" height="4" fill="{colour}"/>'
            f'<text x="{lx + 18}" y="{ly - 4}" fill="{INK}">{_esc(s.name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def calibration_plot(
    points: Sequence[tuple[float, float]], title: str = "Calibration: predicted vs observed risk"
) -> str:
    """Mean predicted risk per group against the observed proportion, with the ideal diagonal."""
    top = max([1.0] + [max(p, o) for p, o in points]) if points else 1.0
    top = 1.0 if top > 0.5 else max(0.1, math.ceil(top * 10) / 10)
    return line_chart(
        title,
        [
            Series("ideal", [(0.0, 0.0), (top, top)], dashed=True, markers=False),
            Series("model", [(float(p), float(o)) for p, o in points]),
        ],
        x_label="predicted risk",
        y_label="observed proportion",
        x_range=(0.0, top),
        y_range=(0.0, top),
        width=420,
        height=400,
        square=True,
    )


def roc_plot(fpr: Sequence[float], tpr: Sequence[float], title: str = "ROC curve") -> str:
    """Sensitivity against 1 - specificity, with the chance diagonal."""
    step = max(1, len(fpr) // 200)  # a few hundred points draw the same curve
    points: list[tuple[float | datetime, float]] = [
        (float(a), float(b)) for a, b in list(zip(fpr, tpr, strict=False))[::step]
    ]
    if fpr:
        points.append((float(fpr[-1]), float(tpr[-1])))
    return line_chart(
        title,
        [
            Series("chance", [(0.0, 0.0), (1.0, 1.0)], dashed=True, markers=False),
            Series("model", points, markers=False),
        ],
        x_label="1 - specificity (false positive rate)",
        y_label="sensitivity",
        x_range=(0.0, 1.0),
        y_range=(0.0, 1.0),
        width=420,
        height=400,
        square=True,
    )


def bar_chart(
    title: str,
    values: Sequence[tuple[str, float]],
    *,
    threshold: float | None = None,
    threshold_label: str = "alert threshold",
    width: int = _W,
) -> str:
    """Horizontal bars in the order given; a bar at or past ``threshold`` in the alert colour."""
    items = list(values)[:30]
    bar_h = 18
    label_w = 210
    height = _TOP + bar_h * max(1, len(items)) + 30
    parts = _frame(title, f"{len(items)} bars", width, height)
    if not items:
        parts.append(f'<text x="{_LEFT}" y="{_TOP + 16}" fill="{INK}">no data yet</text></svg>')
        return "".join(parts)
    top = max([v for _, v in items] + [threshold or 0.0, 1e-9])
    span = width - label_w - 70
    for i, (name, value) in enumerate(items):
        y = _TOP + i * bar_h
        w = max(1.0, span * value / top)
        colour = ALERT if threshold is not None and value >= threshold else PALETTE[0]
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" fill="{INK}">'
            f"{_esc(name[:34])}</text>"
            f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{bar_h - 5}" '
            f'fill="{colour}"><title>{_esc(name)}: {_esc(number(value))}</title></rect>'
            f'<text x="{label_w + w + 5:.1f}" y="{y + 13}" fill="{INK}">'
            f"{_esc(number(value))}</text>"
        )
    if threshold is not None:
        tx = label_w + span * threshold / top
        bottom = _TOP + bar_h * len(items)
        parts.append(
            f'<line x1="{tx:.1f}" y1="{_TOP - 4}" x2="{tx:.1f}" y2="{bottom}" stroke="{ALERT}" '
            f'stroke-dasharray="5 4"/><text x="{tx:.1f}" y="{bottom + 16}" text-anchor="middle" '
            f'fill="{ALERT}">{_esc(threshold_label)} {_esc(number(threshold))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def colour_scale(title: str, stops: Sequence[str], low: str, high: str, *, width: int = 320) -> str:
    """A horizontal colour-scale legend: ``stops`` from low to high, labelled at both ends."""
    height = 64
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{_esc(title)}" class="chart" '
        'font-family="system-ui, sans-serif" font-size="12">',
        f"<title>{_esc(title)}</title>",
        '<defs><linearGradient id="scale" x1="0" x2="1" y1="0" y2="0">',
    ]
    for i, colour in enumerate(stops):
        offset = i / max(1, len(stops) - 1)
        parts.append(f'<stop offset="{offset:.3f}" stop-color="{_esc(colour)}"/>')
    parts.append(
        "</linearGradient></defs>"
        f'<text x="0" y="14" fill="{INK}">{_esc(title)}</text>'
        f'<rect x="0" y="22" width="{width}" height="16" fill="url(#scale)" stroke="{INK}"/>'
        f'<text x="0" y="54" fill="{INK}">{_esc(low)}</text>'
        f'<text x="{width}" y="54" text-anchor="end" fill="{INK}">{_esc(high)}</text></svg>'
    )
    return "".join(parts)

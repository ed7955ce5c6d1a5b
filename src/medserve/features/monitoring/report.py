"""Monitoring reports: a rich table for the terminal and a self-contained HTML page with plots.

The HTML needs nothing from the network: its charts are inline SVG (``core.charts``: PSI per
feature in ordered bands, the PSI history on a date axis), so the page can be attached to a
governance ticket or opened on an air-gapped workstation.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from rich import box
from rich.table import Table

from medserve.core import charts
from medserve.core.presentation import as_datetime, label, number, psi_band, when
from medserve.features.monitoring.drift import INSUFFICIENT


def _num(value: Any, digits: int = 3) -> str:
    """A number for the terminal table (fixed decimals line up); in HTML, as people read it."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


STATUS_STYLE = {"alert": "bold red", "warn": "yellow", "ok": "green", INSUFFICIENT: "dim"}


def enough_data(drift: dict[str, Any]) -> bool:
    """Whether the window had ``min_window_n`` predictions (runs stored before the flag: yes)."""
    return bool(drift.get("enough_data", True))


def _insufficient_note(drift: dict[str, Any], n: int) -> str:
    least = drift.get("min_window_n")
    return f"insufficient data: {n} predictions" + (f", fewer than {least}" if least else "")


def drift_table(run: dict[str, Any]) -> Table:
    drift = run.get("drift") or {}
    title = f"{run.get('model')}: drift, window of {run['window']['n']} predictions"
    if drift and not enough_data(drift):
        title += f" ({_insufficient_note(drift, run['window']['n'])}: no verdict)"
    # Fits 80 columns: no vertical rules, numbers never wrap, long feature names wrap.
    table = Table(
        title=title,
        caption="p: KS test (numeric) or chi-squared (categorical)",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("feature", min_width=12, overflow="fold")
    table.add_column("PSI", justify="right", no_wrap=True)
    table.add_column("status", overflow="fold")
    for column in ("p", "missing", "out of\nrange", "mean"):
        table.add_column(column, justify="right", no_wrap=True)
    features = drift.get("features", {})
    ordered = sorted(features.items(), key=lambda kv: -(kv[1].get("psi") or 0.0))
    verdict = enough_data(drift)
    for name, f in ordered:
        status = f.get("status", "-") if verdict else INSUFFICIENT
        style = STATUS_STYLE.get(status, "")
        table.add_row(
            name,
            _num(f.get("psi")),
            f"[{style}]{status}[/]" if style else status,
            _num(f.get("ks_pvalue", f.get("chi2_pvalue")), 4),
            _num(f.get("missing_rate")),
            _num(f.get("out_of_range_rate")),
            _num(f.get("mean"), 4),
        )
    for key, p in (drift.get("predictions") or {}).items():
        status = p.get("status", "-") if verdict else INSUFFICIENT
        table.add_row(
            f"[italic]prediction {key}[/]",
            _num(p.get("psi")),
            status,
            _num(p.get("ks_pvalue"), 4),
            "-",
            "-",
            _num(p.get("mean"), 4),
        )
    return table


def performance_table(run: dict[str, Any]) -> Table:
    perf = run["performance"]
    matured = perf["matured_window"]
    table = Table(
        title=(
            f"live performance: {matured['n_labelled']} labelled of {matured['n_predictions']} "
            f"predictions in the matured window (horizon {matured['outcome_horizon_s']:g} s)"
        )
    )
    columns = ("group", "n", "AUROC", "O:E", "slope", "sensitivity", "PPV", "MAE")
    for column in columns:
        table.add_column(column, justify="left" if column == "group" else "right")

    def row(label: str, m: dict[str, Any]) -> None:
        table.add_row(
            label,
            str(m.get("n", 0)),
            _num(m.get("auroc")),
            _num(m.get("observed_expected")),
            _num(m.get("calibration_slope")),
            _num(m.get("sensitivity")),
            _num(m.get("ppv")),
            _num(m.get("mae")),
        )

    row("overall", perf["overall"])
    for key, groups in perf.get("subgroups", {}).items():
        for value, m in groups.items():
            row(f"{key}={value}", m)
    return table


def psi_history_chart(runs: list[dict[str, Any]], psi_alert: float) -> str:
    """The largest PSI of each run with a verdict, over time (a date axis), with the bands;
    ``runs`` newest first, as the store lists them. The HTML report's and the console's."""
    points: list[tuple[float | datetime, float]] = []
    for run in reversed(runs):  # oldest first
        drift = run.get("drift") or {}
        # the stored window end (the store's column) first; a run's own body as a fallback
        at = as_datetime(run.get("window_end") or (run.get("window") or {}).get("end"))
        value = (drift.get("summary") or {}).get("psi_max")
        if at is not None and enough_data(drift) and isinstance(value, int | float):
            points.append((at, float(value)))
    return charts.line_chart(
        "Largest feature shift (PSI) per run, runs with enough data",
        [charts.Series("largest PSI", points)],
        y_label="PSI",
        lines=[
            charts.Line(0.10, "moderate shift 0.10", "#a16207"),
            charts.Line(psi_alert, f"alert {number(psi_alert)}"),
        ],
    )


def html_report(
    model: str, runs: list[dict[str, Any]], alerts: list[dict[str, Any]], psi_alert: float
) -> str:
    """A standalone page: the latest window, PSI per feature in ordered bands, the PSI history
    on a date axis, live performance and the alerts; numbers and times formatted for people."""
    esc = html.escape
    latest = runs[0] if runs else None
    body = [f"<h1>Monitoring: {esc(model)}</h1>"]
    if latest is None:
        body.append("<p>No monitoring run yet: run <code>medserve monitor run</code>.</p>")
    else:
        drift = latest.get("drift") or {}
        window = latest["window"]
        body.append(
            f"<p>Latest window {esc(when(window['start']))} to {esc(when(window['end']))}: "
            f"{esc(number(window['n']))} predictions.</p>"
        )
        psis = {k: float(f["psi"]) for k, f in drift.get("features", {}).items() if "psi" in f}
        ordered = sorted(psis.items(), key=lambda kv: -kv[1])
        verdict = not drift or enough_data(drift)
        if not verdict:
            note = _insufficient_note(drift, int(window["n"]))
            body.append(
                f"<p><strong>Status: {esc(note)}.</strong> No drift verdict is given "
                "for this window; its PSI values are shown without alert colours.</p>"
            )
            body.append(
                charts.bar_chart("PSI per feature (insufficient data: no verdict)", ordered)
            )
        else:
            body.append(
                charts.bar_chart(
                    "PSI per feature (dashed line: alert threshold)", ordered, threshold=psi_alert
                )
            )
        if ordered:
            rows = "".join(
                f"<tr><th scope='row'>{esc(name)}</th><td class='num'>{esc(number(value))}</td>"
                f"<td>{esc(psi_band(value) if verdict else INSUFFICIENT)}</td></tr>"
                for name, value in ordered
            )
            body.append(
                "<table><caption>Bands: stable below 0.10, moderate shift 0.10 to 0.25, major "
                "shift 0.25 and above</caption><tr><th scope='col'>Feature</th>"
                f"<th scope='col'>PSI</th><th scope='col'>Band</th></tr>{rows}</table>"
            )
        body.append(psi_history_chart(runs, psi_alert))
        perf = latest["performance"]
        rows = "".join(
            f"<tr><th scope='row'>{esc(label(k))}</th><td class='num'>{esc(number(v))}</td></tr>"
            for k, v in perf["overall"].items()
        )
        body.append(
            f"<h2>Live performance (matured window, "
            f"{esc(number(perf['matured_window']['n_labelled']))} labelled)</h2>"
            f"<table>{rows}</table>"
        )
    alert_rows = "".join(
        "<tr>"
        + f"<td>{esc(str(a.get('id')))}</td><td>{esc(label(str(a.get('metric'))))}</td>"
        + "".join(
            f"<td class='num'>{esc(_num(a.get(k)))}</td>" for k in ("value", "threshold", "n")
        )
        + f"<td>{esc(str(a.get('state')))}</td><td>{esc(str(a.get('delivery')))}</td>"
        + f"<td>{esc(when(a.get('fired_at')))}</td></tr>"
        for a in alerts
    )
    body.append(
        "<h2>Alerts</h2><table><tr><th>id</th><th>metric</th><th>value</th><th>threshold</th>"
        f"<th>n</th><th>state</th><th>delivery</th><th>fired</th></tr>{alert_rows}</table>"
    )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#18181b}"
        "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}"
        ".num{text-align:right;font-variant-numeric:tabular-nums}caption{text-align:left}"
    )
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Monitoring "
        f"{esc(model)}</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
    )

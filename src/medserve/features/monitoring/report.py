"""Monitoring reports: a rich table for the terminal and a self-contained HTML page with plots.

The HTML needs nothing from the network: bar charts are inline SVG, so the page can be attached
to a governance ticket or opened on an air-gapped workstation.
"""

from __future__ import annotations

import html
from typing import Any

from rich.table import Table

from medserve.features.monitoring.drift import INSUFFICIENT


def _num(value: Any, digits: int = 3) -> str:
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
    table = Table(title=title)
    for column in ("feature", "PSI", "status", "KS p / chi2 p", "missing", "out of range", "mean"):
        table.add_column(column, justify="left" if column in ("feature", "status") else "right")
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


def _bars(title: str, values: dict[str, float], threshold: float | None = None) -> str:
    items = list(values.items())[:30]
    if not items:
        return ""
    width, bar_h = 640, 16
    top = max([v for _, v in items] + [threshold or 0.0, 1e-9])
    height = bar_h * len(items) + 30
    parts = [f'<h3>{html.escape(title)}</h3><svg width="{width}" height="{height}">']
    for i, (name, value) in enumerate(items):
        w = int(380 * value / top)
        y = i * bar_h + 5
        color = "#c0392b" if threshold is not None and value >= threshold else "#2e86c1"
        parts.append(
            f'<text x="0" y="{y + 12}" font-size="11">{html.escape(name[:32])}</text>'
            f'<rect x="220" y="{y}" width="{w}" height="{bar_h - 3}" fill="{color}"/>'
            f'<text x="{225 + w}" y="{y + 12}" font-size="11">{value:.3f}</text>'
        )
    if threshold is not None:
        x = 220 + int(380 * threshold / top)
        parts.append(
            f'<line x1="{x}" y1="0" x2="{x}" y2="{height - 20}" stroke="#c0392b" '
            'stroke-dasharray="4"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def html_report(
    model: str, runs: list[dict[str, Any]], alerts: list[dict[str, Any]], psi_alert: float
) -> str:
    latest = runs[0] if runs else None
    body = [f"<h1>medserve monitoring: {html.escape(model)}</h1>"]
    if latest is None:
        body.append("<p>No monitoring run yet: run <code>medserve monitor run</code>.</p>")
    else:
        drift = latest.get("drift") or {}
        body.append(
            f"<p>Latest window {html.escape(str(latest['window']['start']))} to "
            f"{html.escape(str(latest['window']['end']))}: {latest['window']['n']} predictions.</p>"
        )
        psis = {k: float(f["psi"]) for k, f in drift.get("features", {}).items() if "psi" in f}
        psis = dict(sorted(psis.items(), key=lambda kv: -kv[1]))
        if drift and not enough_data(drift):
            note = _insufficient_note(drift, int(latest["window"]["n"]))
            body.append(
                f"<p><strong>Status: {html.escape(note)}.</strong> No drift verdict is given "
                "for this window; its PSI values are shown without alert colours.</p>"
            )
            body.append(_bars("PSI per feature (insufficient data: no verdict)", psis, None))
        else:
            body.append(_bars("PSI per feature (dashed line: alert threshold)", psis, psi_alert))
        history = {
            str(r["window"]["end"])[:19]: float(
                ((r.get("drift") or {}).get("summary") or {}).get("psi_max") or 0
            )
            for r in reversed(runs)
            if enough_data(r.get("drift") or {})  # a run without a verdict is not a point
        }
        body.append(_bars("Largest PSI per run (runs with enough data)", history, psi_alert))
        perf = latest["performance"]
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(_num(v))}</td></tr>"
            for k, v in perf["overall"].items()
        )
        body.append(
            f"<h3>Live performance (matured window, {perf['matured_window']['n_labelled']} "
            f"labelled)</h3><table>{rows}</table>"
        )
    alert_rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(_num(a.get(k)))}</td>"
            for k in ("id", "metric", "value", "threshold", "n", "state", "delivery", "fired_at")
        )
        + "</tr>"
        for a in alerts
    )
    body.append(
        "<h3>Alerts</h3><table><tr><th>id</th><th>metric</th><th>value</th><th>threshold</th>"
        f"<th>n</th><th>state</th><th>delivery</th><th>fired</th></tr>{alert_rows}</table>"
    )
    style = (
        "body{font-family:sans-serif;max-width:900px;margin:2em auto}"
        "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>monitoring {html.escape(model)}"
        f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
    )

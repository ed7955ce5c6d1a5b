"""A self-contained HTML evaluation report: tables plus plots as inline PNG (no external files,
no scripts), so it can be stored as one artifact, mailed, and opened offline.

Needs matplotlib (the ``governance`` extra); plotting uses the non-interactive Agg backend.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from typing import Any

from medserve.core.errors import InvalidRequestError
from medserve.core.presentation import interval, label, number

PLOT_IDS = {
    "binary": ["roc", "precision-recall", "calibration", "decision-curve", "subgroups"],
    "multiclass": ["subgroups"],
    "regression": ["observed-vs-predicted", "subgroups"],
    "survival": ["time-dependent", "survival-calibration", "subgroups"],
}
_CSS = (
    "body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
    ".flag{color:#b00}img{margin:6px}.num{text-align:right;font-variant-numeric:tabular-nums}"
)
_HEADLINE = {
    "binary": "auroc",
    "multiclass": "auroc_macro_ovr",
    "regression": "mae",
    "survival": "concordance",
}


def _pyplot() -> Any:
    try:
        import matplotlib  # noqa: PLC0415 (heavy: matplotlib, kept off the serving path)

        matplotlib.use("Agg")
        # lazy import (heavy: matplotlib, kept off the serving path)
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InvalidRequestError(
            "the HTML report needs matplotlib: pip install 'medserve[governance]'"
        ) from exc
    return plt


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(result: Mapping[str, Any]) -> dict[str, str]:
    plt = _pyplot()
    task = result["task"]
    out: dict[str, str] = {}
    if task == "binary" and result.get("curves"):
        roc = result["curves"]["roc"]
        fig, ax = plt.subplots(figsize=(4.2, 4))
        ax.plot(roc["fpr"], roc["tpr"], label="model")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
        ax.legend(loc="lower right")
        out["roc"] = _png(fig)
        pr = result["curves"]["pr"]
        fig, ax = plt.subplots(figsize=(4.2, 4))
        ax.plot(pr["recall"], pr["precision"])
        ax.axhline(result["metrics"]["prevalence"]["value"], ls="--", color="grey")
        ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall")
        out["precision-recall"] = _png(fig)
    if task == "binary":
        cal = result["calibration_curve"]
        fig, ax = plt.subplots(figsize=(4.2, 4))
        ax.plot([0, 1], [0, 1], "--", color="grey", label="ideal")
        ax.plot([c["predicted"] for c in cal], [c["observed"] for c in cal], "o-", label="model")
        ax.set(xlabel="predicted risk", ylabel="observed proportion", title="Calibration")
        ax.legend(loc="upper left")
        out["calibration"] = _png(fig)
        dc = result["decision_curve"]
        fig, ax = plt.subplots(figsize=(4.2, 4))
        xs = [d["threshold"] for d in dc]
        ax.plot(xs, [d["model"] for d in dc], "o-", label="model")
        ax.plot(xs, [d["treat_all"] for d in dc], label="treat all")
        ax.plot(xs, [0.0 for _ in dc], label="treat none")
        low = min(-0.05, min(d["model"] for d in dc))
        ax.set_ylim(low, max(0.05, max(max(d["model"], d["treat_all"]) for d in dc)) * 1.1)
        ax.set(xlabel="threshold probability", ylabel="net benefit", title="Decision curve")
        ax.legend()
        out["decision-curve"] = _png(fig)
    if task == "regression":
        res = result["residuals"]
        fig, ax = plt.subplots(figsize=(4.2, 4))
        ax.scatter(res["predicted"], res["observed"], s=8, alpha=0.6)
        lo = min(res["predicted"] + res["observed"])
        hi = max(res["predicted"] + res["observed"])
        ax.plot([lo, hi], [lo, hi], "--", color="grey")
        ax.set(xlabel="predicted", ylabel="observed", title="Observed vs predicted")
        out["observed-vs-predicted"] = _png(fig)
    if task == "survival":
        hs = result.get("horizons", [])
        fig, ax = plt.subplots(figsize=(4.2, 4))
        metrics = result["metrics"]
        ax.plot(hs, [metrics[f"auc_at_{h:g}"]["value"] for h in hs], "o-", label="AUC(t)")
        ax.plot(hs, [metrics[f"brier_at_{h:g}"]["value"] for h in hs], "s-", label="Brier(t)")
        ax.set(xlabel="horizon", title="Time-dependent AUC and Brier")
        ax.legend()
        out["time-dependent"] = _png(fig)
        out["survival-calibration"] = _survival_calibration_plot(result, plt)
    out["subgroups"] = _subgroup_plot(result, plt)
    return out


def _survival_calibration_plot(result: Mapping[str, Any], plt: Any) -> str:
    """Predicted risk by each horizon against Kaplan-Meier observed risk, by risk group."""
    calibration = result.get("survival_calibration") or {}
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="ideal")
    for horizon, rows in (calibration.get("by_horizon") or {}).items():
        xs = [r["predicted"] for r in rows]
        ax.plot(xs, [r["observed"] for r in rows], "o-", label=f"by {horizon}")
    ax.set(
        xlabel="predicted risk by the horizon",
        ylabel="observed risk (Kaplan-Meier)",
        title=f"Survival calibration ({calibration.get('groups', 'no horizon')})",
    )
    ax.legend(loc="upper left", fontsize="small")
    return _png(fig)


def _subgroup_plot(result: Mapping[str, Any], plt: Any) -> str:
    metric = _HEADLINE[result["task"]]
    labels: list[str] = []
    values: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    for column, rows in result.get("subgroups", {}).items():
        for row in rows:
            entry = (row.get("metrics") or {}).get(metric) or {}
            value = float(entry.get("value") or 0.0)
            star = " *" if row["flagged"] else ""
            labels.append(f"{column}={row['level']} (n={row['n']}){star}")
            values.append(value)
            low, high = entry.get("ci_low"), entry.get("ci_high")
            lows.append(value if low is None else float(low))
            highs.append(value if high is None else float(high))
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * max(1, len(labels))))
    if labels:
        ys = list(range(len(labels)))
        err = [
            [v - lo for v, lo in zip(values, lows, strict=True)],
            [hi - v for v, hi in zip(values, highs, strict=True)],
        ]
        ax.barh(ys, values, xerr=err, color="#4C78A8", capsize=3)
        ax.set_yticks(ys, labels)
        overall = result["metrics"][metric]["value"]
        if overall is not None:
            ax.axvline(overall, ls="--", color="grey", label="overall")
            ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no subgroups evaluated", ha="center", va="center")
    ax.set(title=f"{metric} by subgroup (* = below minimum n, not reported)", xlabel=metric)
    return _png(fig)


def _fmt(entry: Mapping[str, Any] | None) -> str:
    """A metric with its 95% interval as people read it: ``0.71 (0.55 to 0.86)``."""
    if not entry or entry.get("value") is None:
        return "n/a"
    return interval(entry)


def render_report(
    result: Mapping[str, Any], *, title: str, context: Mapping[str, Any] | None = None
) -> str:
    """The report as one HTML string; every plot is an ``<img id="plot-...">`` data URI."""
    esc = html.escape
    plots = _plots(result)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    facts: dict[str, Any] = {"task": result["task"], "patients": number(result["n"])}
    facts.update(context or {})
    for key in ("positive_label", "n_positive", "n_events"):
        if key in result:
            facts[key.replace("_", " ")] = number(result[key])
    if "threshold" in result:
        facts["operating threshold"] = (
            f"{number(result['threshold']['value'])} ({result['threshold']['method']})"
        )
    boot = result["bootstrap"]
    facts["confidence intervals"] = f"{boot['method']} bootstrap, {boot['resamples']} resamples"
    parts.append("<table>")
    parts += [f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in facts.items()]
    parts.append(
        "</table><h2>Metrics, value (95% interval)</h2>"
        "<table><tr><th>metric</th><th>value</th></tr>"
    )
    parts += [
        f"<tr><td>{esc(label(k))}</td><td class='num'>{esc(_fmt(v))}</td></tr>"
        for k, v in result["metrics"].items()
    ]
    parts.append("</table><h2>Plots</h2>")
    parts += [
        f"<img id='plot-{pid}' alt='{pid}' src='data:image/png;base64,{data}'>"
        for pid, data in plots.items()
    ]
    calibration = (result.get("survival_calibration") or {}).get("by_horizon") or {}
    if calibration:
        parts.append(
            "<h2>Survival calibration</h2><table><tr><th>horizon</th><th>risk group</th>"
            "<th>n</th><th>events by horizon</th><th>predicted risk</th>"
            "<th>observed risk (Kaplan-Meier)</th></tr>"
        )
        parts += [
            f"<tr><td>{esc(h)}</td><td>{r['group']}</td><td>{r['n']}</td>"
            f"<td>{r['events_by_horizon']}</td><td>{number(r['predicted'])}</td>"
            f"<td>{number(r['observed'])}</td></tr>"
            for h, rows in calibration.items()
            for r in rows
        ]
        parts.append("</table>")
    parts.append("<h2>Subgroups</h2>")
    if result.get("synthetic_subgroups"):
        parts.append(
            "<p class='flag'>Synthetic subgroup columns (randomly assigned, for demonstrating "
            f"the method only): {esc(', '.join(result['synthetic_subgroups']))}</p>"
        )
    headline = _HEADLINE[result["task"]]
    for column, rows in result.get("subgroups", {}).items():
        parts.append(f"<h3>{esc(label(column))}</h3><table><tr><th>level</th><th>patients</th>")
        parts.append(f"<th>{esc(label(headline))} (95% interval)</th><th>note</th></tr>")
        for row in rows:
            value = "-" if row["flagged"] else _fmt(row["metrics"].get(headline))
            note = row.get("reason", "")
            parts.append(
                f"<tr><td>{esc(str(row['level']))}</td><td class='num'>{esc(number(row['n']))}</td>"
                f"<td class='num'>{esc(value)}</td>"
                f"<td class='flag'>{esc(note)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)

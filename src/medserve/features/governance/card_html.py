"""The model card as a clinician reads it: HTI-1 attributes grouped under plain questions, the
metrics with their intervals as "0.71 (0.55 to 0.86)", the subgroup table, calibration and ROC
plots as inline SVG. One renderer for the HTML file the CLI writes and the console's card page
(``card_fragment`` has no inline style or script, for the console's CSP; ``render_card_html``
wraps it in a standalone document with its own stylesheet).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from medserve.core import charts
from medserve.core.presentation import DASH, interval, label, number, when

# Plain-language sections over the 31 HTI-1 source attributes (ids of cards.HTI1_ATTRIBUTES).
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "What the model does",
        ("output_description", "output_type", "intended_use", "intended_population",
         "intended_users", "decision_role"),
    ),
    ("When not to rely on it", ("cautioned_uses", "known_risks")),
    (
        "What it learned from",
        ("training_criteria", "demographic_inputs", "demographic_representativeness",
         "deployment_relevance"),
    ),
    ("How well it works", ("validity_test", "validity_external", "validity_local")),
    (
        "Whether it is fair",
        ("fairness_approach", "bias_management", "fairness_test", "fairness_external",
         "fairness_local"),
    ),
    (
        "Testing outside the developer",
        ("external_validation_source", "external_validation_party",
         "external_validation_representativeness", "external_validation_process",
         "outcome_references"),
    ),
    (
        "How it is kept safe",
        ("validity_monitoring", "fairness_monitoring", "update_process", "update_frequency"),
    ),
    ("Who made it", ("developer", "funding")),
)  # fmt: skip

QUESTIONS: dict[str, str] = {
    "output_description": "What it produces",
    "output_type": "Kind of output",
    "intended_use": "What it is for",
    "intended_population": "For which patients",
    "intended_users": "For whom",
    "decision_role": "Its role in the decision",
    "cautioned_uses": "Use with caution",
    "known_risks": "Known risks and limits",
    "training_criteria": "Who was in the training data",
    "demographic_inputs": "Demographic inputs it uses",
    "demographic_representativeness": "How representative the training data are",
    "deployment_relevance": "How well the training data match this hospital",
    "validity_test": "On held-out test patients",
    "validity_external": "On external data",
    "validity_local": "On this hospital's data",
    "fairness_approach": "How fairness is pursued",
    "bias_management": "How bias is managed",
    "fairness_test": "By subgroup, on test patients",
    "fairness_external": "By subgroup, on external data",
    "fairness_local": "By subgroup, on this hospital's data",
    "external_validation_source": "Where it was tested",
    "external_validation_party": "Who tested it",
    "external_validation_representativeness": "How representative the external data are",
    "external_validation_process": "How it was tested",
    "outcome_references": "Evidence on patient outcomes",
    "validity_monitoring": "How accuracy is monitored",
    "fairness_monitoring": "How fairness is monitored",
    "update_process": "How it is updated",
    "update_frequency": "How often it is updated",
    "developer": "Developer and contact",
    "funding": "Funding",
}

HEADLINE = {
    "binary": ("auroc", "auprc", "brier", "calibration_slope", "calibration_intercept",
               "oe_ratio", "sensitivity", "specificity", "ppv", "npv"),
    "multiclass": ("auroc_macro_ovr", "accuracy", "f1_macro", "brier"),
    "regression": ("mae", "rmse", "r2"),
    "survival": ("concordance",),
    # generative models (features/llm/evaluation.py: medserve evaluate --cases)
    "generation": ("schema_validity", "exact_match", "field_match", "refusal_rate", "phi_leaks",
                   "latency_s"),
}  # fmt: skip

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#18181b;"
    "line-height:1.45}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #d4d4d8;"
    "padding:4px 8px;text-align:left;vertical-align:top}th{background:#f4f4f5}"
    ".missing{color:#b91c1c}.num{text-align:right;font-variant-numeric:tabular-nums}"
    ".flag{color:#92400e}.plots{display:flex;flex-wrap:wrap;gap:1em}dt{font-weight:600}"
    "dd{margin:0 0 .6em 0}"
)


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _value(value: Any) -> str:
    """An author statement or derived text as HTML: lists as bullets, mappings as terms."""
    if value is None or value == "" or value == [] or value == {}:
        return '<span class="missing">not stated</span>'
    if isinstance(value, Mapping):
        items = "".join(
            f"<dt>{_esc(label(str(k)))}</dt><dd>{_value(v)}</dd>" for k, v in value.items()
        )
        return f"<dl>{items}</dl>"
    if isinstance(value, list):
        return "<ul>" + "".join(f"<li>{_value(v)}</li>" for v in value) + "</ul>"
    if isinstance(value, float | int) and not isinstance(value, bool):
        return _esc(number(value))
    return _esc(value)


def metrics_table(result: Mapping[str, Any]) -> str:
    """The headline metrics of one evaluation with their 95% intervals."""
    metrics = result.get("metrics") or {}
    names = [n for n in HEADLINE.get(str(result.get("task")), ()) if n in metrics]
    names += [n for n in metrics if n.startswith(("auc_at_", "brier_at_")) and n not in names]
    if not names:
        return ""
    rows = "".join(
        f"<tr><th scope='row'>{_esc(label(n))}</th>"
        f"<td class='num'>{_esc(interval(metrics.get(n)))}</td></tr>"
        for n in names
    )
    threshold = result.get("threshold")
    if isinstance(threshold, Mapping):  # {"value", "method"}
        threshold = threshold.get("value")
    note = (
        f"<p>Operating threshold: a predicted risk of {_esc(number(threshold))} or more counts "
        "as positive.</p>"
        if isinstance(threshold, int | float)
        else ""
    )
    n = result.get("n")
    caption = f"{number(n)} patients; value (95% interval)" if n else "value (95% interval)"
    return (
        f"<table><caption>{_esc(caption)}</caption><tr><th scope='col'>Measure</th>"
        f"<th scope='col'>Value (95% interval)</th></tr>{rows}</table>{note}"
    )


def subgroup_table(result: Mapping[str, Any]) -> str:
    """One row per subgroup: its size, the headline metric with its interval, or why not."""
    task = str(result.get("task"))
    metric = HEADLINE.get(task, ("",))[0]
    rows = []
    for column, levels in (result.get("subgroups") or {}).items():
        for row in levels:
            if row.get("flagged"):
                why = str(row.get("reason") or "too few patients").removesuffix(": not reported")
                shown = f"<td class='flag'>not reported: {_esc(why)}</td>"
            else:
                entry = (row.get("metrics") or {}).get(metric)
                shown = f"<td class='num'>{_esc(interval(entry))}</td>"
            rows.append(
                f"<tr><th scope='row'>{_esc(label(str(column)))}: {_esc(row.get('level'))}</th>"
                f"<td class='num'>{_esc(number(row.get('n')))}</td>{shown}</tr>"
            )
    if not rows:
        return "<p>No subgroup was evaluated.</p>"
    synthetic = result.get("synthetic_subgroups") or []
    note = (
        f"<p class='flag'>Synthetic subgroup columns (randomly assigned, to show the method): "
        f"{_esc(', '.join(synthetic))}.</p>"
        if synthetic
        else ""
    )
    return (
        f"<table><caption>{_esc(label(metric))} by subgroup</caption><tr>"
        "<th scope='col'>Subgroup</th><th scope='col'>Patients</th>"
        f"<th scope='col'>{_esc(label(metric))} (95% interval)</th></tr>{''.join(rows)}"
        f"</table>{note}"
    )


def evaluation_plots(result: Mapping[str, Any]) -> dict[str, str]:
    """Calibration and ROC plots (SVG) of one stored evaluation, where it has the data."""
    plots: dict[str, str] = {}
    calibration = result.get("calibration_curve") or []
    points = [
        (float(c["predicted"]), float(c["observed"]))
        for c in calibration
        if c.get("predicted") is not None and c.get("observed") is not None
    ]
    if points:
        plots["calibration"] = charts.calibration_plot(points)
    roc = (result.get("curves") or {}).get("roc")
    if roc and roc.get("fpr"):
        auroc = (result.get("metrics") or {}).get("auroc") or {}
        title = f"ROC curve (AUROC {interval(auroc)})" if auroc else "ROC curve"
        plots["roc"] = charts.roc_plot(roc["fpr"], roc["tpr"], title)
    return plots


def card_fragment(card: Mapping[str, Any], evaluation: Mapping[str, Any] | None = None) -> str:
    """The card's body as HTML without inline styles or scripts. ``evaluation``: the stored
    result of the test evaluation, for the metrics and subgroup tables and the plots."""
    out: list[str] = []
    details = card["model_card"]["model_details"]
    status = (
        "complete: every HTI-1 attribute is filled and nothing disagrees"
        if card["complete"]
        else f"incomplete: {len(card['missing'])} missing, {len(card['problems'])} problems"
    )
    out.append(
        f"<p class='card-status'>This card is <strong>{_esc(status)}</strong>.</p>"
        "<dl class='facts'>"
        f"<dt>Model</dt><dd>{_esc(card['model'])}, version {_esc(card['version'])}</dd>"
        f"<dt>Description</dt><dd>{_value(details.get('description'))}</dd>"
        f"<dt>Algorithm</dt><dd>{_value(details.get('algorithm'))}</dd>"
        f"<dt>Runs on</dt><dd>{_value(details.get('runtime'))}</dd>"
        f"<dt>Registered</dt><dd>{_esc(when(details.get('created')))} by "
        f"{_esc(details.get('created_by'))}</dd></dl>"
    )
    if card["missing"] or card["problems"] or card.get("warnings"):
        items = [f"<li>Missing: {_esc(m)}</li>" for m in card["missing"]]
        items += [f"<li>Problem: {_esc(p)}</li>" for p in card["problems"]]
        items += [f"<li>Warning: {_esc(w)}</li>" for w in card.get("warnings") or []]
        out.append(f"<h2>What this card still needs</h2><ul class='missing'>{''.join(items)}</ul>")
    hti1 = card["hti1_source_attributes"]
    for title, ids in SECTIONS:
        out.append(f"<h2>{_esc(title)}</h2>")
        if title == "How well it works" and evaluation:
            out.append(metrics_table(evaluation))
        if title == "Whether it is fair" and evaluation:
            out.append(subgroup_table(evaluation))
        rows = []
        for attr in ids:
            entry = hti1.get(attr)
            if entry is None:
                continue
            source = (
                " <span class='source'>(from the evaluation)</span>"
                if (entry["source"] == "derived" and entry["filled"])
                else ""
            )
            rows.append(
                f"<dt>{_esc(QUESTIONS.get(attr, entry['label']))}{source}</dt>"
                f"<dd>{_value(entry['value'])}</dd>"
            )
        out.append(f"<dl>{''.join(rows)}</dl>")
    if evaluation:
        plots = evaluation_plots(evaluation)
        if plots:
            out.append("<h2>Calibration and discrimination</h2><div class='plots'>")
            out += [plots[k] for k in ("calibration", "roc") if k in plots]
            out.append("</div>")
    out.append("<h2>Ethical considerations</h2>")
    out.append(f"<p>{_value(card['model_card'].get('ethical_considerations'))}</p>")
    out.append("<h2>Caveats and recommendations</h2>")
    out.append(_value(card["model_card"].get("caveats_and_recommendations")))
    criteria = card.get("acceptance_criteria") or []
    out.append("<h2>Acceptance criteria for production</h2>")
    if criteria:
        table = "".join(
            f"<tr><td>{_esc(label(str(c.get('metric', ''))))}</td>"
            f"<td>{_esc(c.get('statistic', 'value'))}</td><td>{_esc(c.get('scope', 'overall'))}"
            f"</td><td class='num'>{_esc(_bounds(c))}</td></tr>"
            for c in criteria
        )
        out.append(
            "<table><tr><th scope='col'>Measure</th><th scope='col'>Statistic</th>"
            f"<th scope='col'>Scope</th><th scope='col'>Required</th></tr>{table}</table>"
        )
    else:
        out.append("<p class='missing'>None declared.</p>")
    importance = card.get("global_feature_importance") or {}
    features = importance.get("features") or {}
    if features:
        bars = sorted(((str(k), float(v)) for k, v in features.items()), key=lambda kv: -kv[1])
        out.append("<h2>What the model relies on most</h2>")
        out.append(charts.bar_chart("Mean absolute contribution per feature", bars[:15]))
    return "".join(out)


def _bounds(criterion: Mapping[str, Any]) -> str:
    parts = []
    if criterion.get("min") is not None:
        parts.append(f"at least {number(criterion['min'])}")
    if criterion.get("max") is not None:
        parts.append(f"at most {number(criterion['max'])}")
    return " and ".join(parts) or DASH


def render_card_html(card: Mapping[str, Any], evaluation: Mapping[str, Any] | None = None) -> str:
    """A standalone HTML document of the card (what ``medserve models card -o html`` writes)."""
    title = f"Model card: {card['model']} version {card['version']}"
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{_esc(title)}</h1>"
        f"{card_fragment(card, evaluation)}</body></html>"
    )

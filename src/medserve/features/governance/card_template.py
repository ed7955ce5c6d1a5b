"""The card template: every author statement of a model card, commented, with an
``acceptance:`` block, for ``medserve models card NAME@V --template``.

Someone bringing a model trained elsewhere needs to know, before the gate tells them one line at a
time, everything a card asks of its author; the template lists it in one file that ``--edit``
then stores as it is.
"""

from __future__ import annotations

from medserve.features.governance.cards import (
    AUTHOR_TEMPLATE_KEYS,
    DEMOGRAPHIC_CATEGORIES,
    HTI1_ATTRIBUTES,
)

_SECTION_HINTS = {
    "ethical_considerations": "Model Cards: ethical considerations (data, risks, mitigations)",
    "caveats": "Model Cards: caveats and recommendations",
    "model_card_contact": "who answers questions about this card",
}

_HEADER = (
    "# Model card: the author's statements. Fill in every value, then store them with",
    "#   medserve models card NAME@VERSION --edit THIS_FILE",
    "# Numbers (validity, fairness on test data) are never typed here: they come from the",
    "# stored evaluations (medserve evaluate NAME@VERSION --kind test ...).",
    "# Derived by medserve, not written here: output_type (from the task), validity_test and",
    "# fairness_test (from the test evaluation), the demographic inputs (from the signature).",
)

_ACCEPTANCE = (
    "acceptance:   # what the test evaluation must show before production (the gate checks it)",
    "  # metric: a metric of the evaluation (auroc, auprc, brier, oe_ratio, calibration_slope,",
    "  #   sensitivity, specificity, ppv, npv; mae, rmse, r2; concordance);",
    "  # statistic: value (default) | ci_low | ci_high; scope: overall (default) |",
    "  #   each_subgroup (every subgroup of the evaluation, --subgroup COLUMN); min and/or max",
    "  - {metric: auroc, statistic: ci_low, min: 0.75}",
    "  - {metric: brier, max: 0.2}",
    "  - {metric: auroc, scope: each_subgroup, min: 0.7}",
)


def card_template() -> str:
    """A commented YAML of every author statement (each HTI-1 attribute that is not derived,
    the Model Cards sections, the demographic-input statements) and an ``acceptance:`` block."""
    labels = {key: label for _, label, key in HTI1_ATTRIBUTES if key}
    lines = list(_HEADER)
    opened: set[str] = set()
    for key in AUTHOR_TEMPLATE_KEYS:
        *parents, leaf = key.split(".")
        if parents and parents[0] not in opened:
            opened.add(parents[0])
            lines.append(f"{parents[0]}:")
        if key == "demographic_inputs":
            lines.append(
                "demographic_inputs:   # is each an input? (checked against the signature)"
            )
            lines += [f"  {category}: false" for category in DEMOGRAPHIC_CATEGORIES]
            continue
        indent = "  " * len(parents)
        hint = labels.get(key) or _SECTION_HINTS.get(key, "")
        lines.append(f'{indent}{leaf}: ""   # {hint}' if hint else f'{indent}{leaf}: ""')
    lines += _ACCEPTANCE
    return "\n".join(lines) + "\n"

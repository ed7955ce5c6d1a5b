"""The clinician-readable card (features.governance.card_html): sections in plain words,
intervals formatted for people, the subgroup table and the plots, and no inline style or
script in the console's fragment."""

from __future__ import annotations

import re
from typing import Any

from medserve.features.governance.card_html import card_fragment, render_card_html


def _card() -> dict[str, Any]:
    hti1 = {
        "intended_use": {"label": "Intended use", "value": "triage", "source": "author",
                         "filled": True},
        "funding": {"label": "Funding", "value": None, "source": "author", "filled": False},
        "validity_test": {"label": "Validity", "value": "n=100: auroc 0.81 (0.74 to 0.88)",
                          "source": "derived", "filled": True},
    }  # fmt: skip
    return {
        "model": "m",
        "version": 2,
        "complete": False,
        "missing": ["HTI-1 funding"],
        "problems": [],
        "warnings": [],
        "hti1_source_attributes": hti1,
        "model_card": {
            "model_details": {"description": "d", "created": "2026-12-06T09:26:35.5+00:00"},
            "ethical_considerations": "none known",
            "caveats_and_recommendations": ["demo data"],
        },
        "acceptance_criteria": [{"metric": "auroc", "min": 0.7}],
        "global_feature_importance": {"features": {"age": 0.3, "bp": 0.1}},
    }


def _evaluation() -> dict[str, Any]:
    return {
        "task": "binary",
        "n": 1234,
        "metrics": {"auroc": {"value": 0.8123456, "ci_low": 0.7412, "ci_high": 0.8801}},
        "threshold": {"value": 0.5733351874927533, "method": "youden"},
        "subgroups": {
            "sex": [
                {"level": "F", "n": 600, "flagged": False,
                 "metrics": {"auroc": {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}}},
                {"level": "X", "n": 4, "flagged": True, "reason": "n=4 below min_n"},
            ]
        },
        "calibration_curve": [{"predicted": 0.1, "observed": 0.12},
                              {"predicted": 0.6, "observed": 0.55}],
        "curves": {"roc": {"fpr": [0, 0.2, 1], "tpr": [0, 0.7, 1]}},
    }  # fmt: skip


def test_card_reads_for_people() -> None:
    fragment = card_fragment(_card(), _evaluation())
    assert "What the model does" in fragment
    assert "How well it works" in fragment
    assert "0.81 (0.74 to 0.88)" in fragment
    assert "1,234 patients" in fragment
    assert not re.search(r"\d\.\d{5,}", fragment)  # no 0.5733351874927533
    assert "Sex: F" in fragment
    assert "not reported: n=4 below min_n" in fragment
    assert "Calibration: predicted vs observed risk" in fragment
    assert "ROC curve (AUROC 0.81 (0.74 to 0.88))" in fragment
    assert "at least 0.70" in fragment
    assert "not stated" in fragment  # the missing funding is visible
    assert "6 Dec 2026 09:26 UTC" in fragment


def test_console_fragment_has_no_inline_style_or_script() -> None:
    fragment = card_fragment(_card(), _evaluation())
    assert "<script" not in fragment
    assert "style=" not in fragment
    assert "<style" not in fragment
    page = render_card_html(_card())
    assert page.startswith("<!doctype html>")
    assert "<style>" in page

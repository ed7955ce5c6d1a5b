"""The promotion gate: refuses an incomplete card and a failing criterion; overrides need an
approver and a reason and land in the alias history; demographic flags must agree."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from medserve.core.errors import InvalidRequestError, PromotionBlockedError
from medserve.core.registry.service import Registry
from medserve.core.registry.signature import infer_signature
from medserve.core.store.governance import GovernanceStore
from medserve.features.governance.cards import build_card, derive_demographic_inputs
from medserve.features.governance.gate import check_criteria, set_alias_gated
from medserve.features.training.pipeline import train
from medserve.features.training.spec import parse_spec


def _complete_card() -> dict[str, Any]:
    from medserve.faces.demo import _demo_card

    return _demo_card("m", "risk", "adults", "demo caveat")


def _frame() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True, scaled=False)
    frame = data.data.copy()
    frame["high"] = (data.target > 140).astype(int)
    return frame


def _train(registry: Registry, **extra: Any) -> int:
    spec = parse_spec(
        {
            "name": "diab",
            "data": "inline",
            "task": "binary",
            "target": "high",
            "cv_folds": 2,
            "age_bands": {"column": "age", "edges": [50]},
            "evaluation": {"bootstrap": 30, "min_n": 20},
            **extra,
        }
    )
    return train(spec, registry, frame=_frame()).version.version


def test_gate_refuses_an_incomplete_card_listing_what_is_missing(registry: Registry) -> None:
    number = _train(registry, acceptance=[{"metric": "auroc", "min": 0.5}])
    with pytest.raises(PromotionBlockedError) as info:
        set_alias_gated(registry, "diab", "production", number, actor="ana")
    messages = [d["message"] for d in info.value.details]
    assert any("HTI-1 developer" in m for m in messages)
    assert any("ethical_considerations" in m for m in messages)
    assert not any("auroc" in m for m in messages)  # the criterion itself is met
    # Other aliases are not gated.
    assert set_alias_gated(registry, "diab", "staging", number, actor="ana").to_version == number


def test_gate_refuses_a_failing_criterion_and_author_contradicting_the_signature(
    registry: Registry,
) -> None:
    card = {**_complete_card(), "demographic_inputs": {"sex": False}}
    number = _train(
        registry,
        card=card,
        acceptance=[
            {"metric": "auroc", "statistic": "ci_low", "min": 0.99},
            {"metric": "auroc", "scope": "each_subgroup", "min": 0.5},
        ],
    )
    with pytest.raises(PromotionBlockedError) as info:
        set_alias_gated(registry, "diab", "production", number, actor="ana")
    messages = [d["message"] for d in info.value.details]
    assert any(m.startswith("auroc ci_low (overall)") and ">= 0.99" in m for m in messages)
    assert any("'sex'" in m and "states it is not an input" in m for m in messages)
    assert not any("HTI-1" in m for m in messages)  # the card itself is filled
    with pytest.raises(PromotionBlockedError):
        set_alias_gated(registry, "diab", "production", number, actor="ana", reason="please")


def test_override_needs_a_named_approver_and_a_reason(registry: Registry) -> None:
    number = _train(registry)
    for approver, reason in (("", "urgent"), ("Dr Lee", ""), ("  ", "  ")):
        with pytest.raises(InvalidRequestError):
            set_alias_gated(
                registry, "diab", "production", number, actor="ana",
                reason=reason, override_approver=approver,
            )  # fmt: skip
    with pytest.raises(Exception, match="alias"):
        registry.store.get_alias("diab", "production")
    event = set_alias_gated(
        registry, "diab", "production", number, actor="ana",
        reason="pilot approved by committee", override_approver="Dr Lee",
    )  # fmt: skip
    assert event.to_version == number
    history = registry.store.alias_history("diab", "production")
    assert history[-1].reason.startswith("OVERRIDE by Dr Lee: pilot approved by committee")
    assert "no acceptance criteria declared" in history[-1].reason


def test_gate_passes_a_complete_card_meeting_its_criteria(registry: Registry) -> None:
    number = _train(
        registry,
        card=_complete_card(),
        acceptance=[
            {"metric": "auroc", "min": 0.6},
            {"metric": "auroc", "scope": "each_subgroup", "min": 0.55},
        ],
    )
    card = build_card(GovernanceStore(registry.store), registry.store.get_version("diab", number))
    assert card["complete"], card["missing"] + card["problems"]
    assert card["demographic_inputs"]["sex"]["features"] == ["sex"]
    assert card["demographic_inputs"]["date_of_birth"]["features"] == ["age"]
    assert "age_band" in card["hti1_source_attributes"]["fairness_test"]["value"]
    event = set_alias_gated(registry, "diab", "production", number, actor="ana")
    assert event.reason.startswith("promotion gate passed")


def test_criteria_check_each_subgroup_and_report_flagged_ones_as_not_assessable() -> None:
    """A subgroup below min_n/min_events is not skipped: unchecked is not passed."""
    result = {
        "metrics": {"auroc": {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}},
        "subgroups": {
            "sex": [
                {"level": "f", "n": 90, "flagged": False, "metrics": {"auroc": {"value": 0.82}}},
                {"level": "m", "n": 80, "flagged": False, "metrics": {"auroc": {"value": 0.66}}},
                {
                    "level": "x",
                    "n": 3,
                    "flagged": True,
                    "reason": "n=3 is below the minimum of 30: not reported",
                },
            ]
        },
    }
    problems = check_criteria([{"metric": "auroc", "scope": "each_subgroup", "min": 0.7}], result)
    assert sorted(problems) == [
        "auroc (sex=x) is not assessable: n=3 is below the minimum of 30",
        "auroc value (sex=m) = 0.6600, required >= 0.7",
    ]
    assert check_criteria([{"metric": "auroc", "statistic": "ci_low", "min": 0.7}], result) == []
    assert check_criteria([{"metric": "auroc"}], result) == [
        "malformed acceptance criterion {'metric': 'auroc'}"
    ]


def test_demographic_inputs_are_derived_from_feature_names() -> None:
    frame = pd.DataFrame(
        {"Patient Race": ["a"], "preferred_language": ["en"], "age": [3], "creatinine": [1.0]}
    )
    found = derive_demographic_inputs(infer_signature(frame))
    assert found["race"] == ["Patient Race"]
    assert found["language"] == ["preferred_language"]
    assert found["date_of_birth"] == ["age"]
    assert found["health_status_assessment"] == []
    assert all("creatinine" not in names for names in found.values())

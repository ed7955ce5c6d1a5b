"""Model cards: the Model Cards sections (Mitchell et al. 2019) and the 31 ONC HTI-1 predictive
decision-support source attributes (45 CFR 170.315(b)(11)(iv)).

A card is *built*, not stored whole: the author's statements (YAML, ``medserve models card
NAME@v --edit FILE``) are stored; the quantitative attributes come from stored evaluations and
the training record every time, so nobody can type a number the evaluation did not produce.
Whether race, ethnicity, language, sexual orientation, gender identity, sex, date of birth,
social determinants of health or health status are inputs is derived from the signature and must
agree with what the author states.
"""

# ruff: noqa: E501  (the attribute tables read best one entry per line)
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from medserve.core.presentation import interval
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.signature import Signature
from medserve.core.store.governance import GovernanceStore
from medserve.core.store.monitoring import MonitoringStore
from medserve.features.governance import card_html

# Keyword tokens of feature names/descriptions that reveal each demographic input category.
DEMOGRAPHIC_CATEGORIES: dict[str, tuple[str, ...]] = {
    "race": ("race", "racial"),
    "ethnicity": ("ethnicity", "ethnic", "hispanic", "latino"),
    "language": ("language", "lang", "interpreter"),
    "sexual_orientation": ("orientation", "sexual"),
    "gender_identity": ("gender",),
    "sex": ("sex", "male", "female"),
    "date_of_birth": ("dob", "birth", "birthdate", "age", "age_years"),
    "social_determinants_of_health": (
        "sdoh", "income", "education", "housing", "homeless", "employment", "employed",
        "insurance", "zip", "zipcode", "marital", "married", "mar", "poverty", "fin", "wexp",
    ),
    "health_status_assessment": ("health_status", "frailty", "adl", "phq", "promis", "functional"),
}  # fmt: skip

MODEL_CARD_SECTIONS = (
    "model_details",
    "intended_use",
    "out_of_scope_use",
    "factors",
    "metrics",
    "evaluation_data",
    "training_data",
    "quantitative_analyses",
    "ethical_considerations",
    "caveats_and_recommendations",
)

# (id, label, author key (dotted) or None when derived)
HTI1_ATTRIBUTES: tuple[tuple[str, str, str | None], ...] = (
    ("developer", "Name and contact information of the developer", "developer"),
    ("funding", "Funding source of the intervention's development", "funding"),
    ("output_description", "Description of the value the intervention produces", "output_description"),
    ("output_type", "Output type (prediction, classification, recommendation, ...)", None),
    ("intended_use", "Intended use", "intended_use"),
    ("intended_population", "Intended patient population(s)", "intended_population"),
    ("intended_users", "Intended user(s)", "intended_users"),
    ("decision_role", "Intended decision-making role (informs, augments, replaces)", "decision_role"),
    ("cautioned_uses", "Tasks, situations or populations where use is cautioned against", "cautioned_uses"),
    ("known_risks", "Known risks, inappropriate settings or uses, known limitations", "known_risks"),
    ("training_criteria", "Inclusion and exclusion criteria of the training data", "training_criteria"),
    ("demographic_inputs", "Use of race, ethnicity, language, sexual orientation, gender identity, sex, date of birth, social determinants of health, health status as input features", None),
    ("demographic_representativeness", "Demographic representativeness of the training data", "demographic_representativeness"),
    ("deployment_relevance", "Relevance of the training data to the intended deployment setting", "deployment_relevance"),
    ("fairness_approach", "Approach to ensure the output is fair", "fairness_approach"),
    ("bias_management", "Approach to manage, reduce or eliminate bias", "bias_management"),
    ("external_validation_source", "Source, setting or environment of external validation", "external_validation.source"),
    ("external_validation_party", "Party that conducted external testing", "external_validation.party"),
    ("external_validation_representativeness", "Demographic representativeness of external data", "external_validation.representativeness"),
    ("external_validation_process", "External validation process", "external_validation.process"),
    ("validity_test", "Validity of the intervention on test data from the training source", None),
    ("fairness_test", "Fairness of the intervention on test data from the training source", None),
    ("validity_external", "Validity of the intervention on external data", "external_validation.validity"),
    ("fairness_external", "Fairness of the intervention on external data", "external_validation.fairness"),
    ("outcome_references", "References to evaluation of use of the intervention on outcomes", "outcome_references"),
    ("validity_monitoring", "Process and frequency of monitoring validity", "monitoring.validity_process"),
    ("fairness_monitoring", "Process and frequency of monitoring fairness", "monitoring.fairness_process"),
    ("validity_local", "Validity of the intervention in local data", "monitoring.local_validity"),
    ("fairness_local", "Fairness of the intervention in local data", "monitoring.local_fairness"),
    ("update_process", "Update process", "update.process"),
    ("update_frequency", "Update frequency", "update.frequency"),
)  # fmt: skip

AUTHOR_TEMPLATE_KEYS = sorted(
    {key for _, _, key in HTI1_ATTRIBUTES if key}
    | {"ethical_considerations", "caveats", "demographic_inputs", "model_card_contact"}
)


def get_dotted(data: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted key (``a.b.c``) of an author's nested card, ``None`` where a level
    is missing; the console's card editor reads the same keys."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _filled(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list | dict):
        return bool(value)
    return True


def _tokens(text: str) -> set[str]:
    words = [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]
    return set(words) | {"_".join(words)}


def derive_demographic_inputs(signature: Signature) -> dict[str, list[str]]:
    """Category -> features that look like it (by name, or by description words)."""
    found: dict[str, list[str]] = {c: [] for c in DEMOGRAPHIC_CATEGORIES}
    for feature in signature.inputs:
        tokens = _tokens(feature.name)
        for category, keywords in DEMOGRAPHIC_CATEGORIES.items():
            if tokens & set(keywords):
                found[category].append(feature.name)
    return found


def _fmt_entry(entry: Mapping[str, Any] | None) -> str:
    """A metric with its 95% interval as people read it: ``0.71 (0.55 to 0.86)``."""
    if not entry or entry.get("value") is None:
        return "n/a"
    return interval(entry)


def summarize_validity(result: Mapping[str, Any]) -> str:
    names = card_html.HEADLINE.get(result.get("task", ""), ())
    metrics = result.get("metrics", {})
    for name in metrics:
        if result.get("task") == "survival" and name != "event_rate" and name not in names:
            names = (*names, name)
    parts = [f"{n} {_fmt_entry(metrics.get(n))}" for n in names if n in metrics]
    text = f"n={result.get('n')}: " + "; ".join(parts)
    calibration = survival_calibration_summary(result)
    return f"{text}; {calibration}" if calibration else text


def survival_calibration_summary(result: Mapping[str, Any]) -> str:
    """One line per horizon: predicted vs Kaplan-Meier observed risk, lowest and highest
    risk group, so a reader sees whether the model's absolute risks hold."""
    calibration = result.get("survival_calibration") or {}
    parts = []
    for horizon, rows in (calibration.get("by_horizon") or {}).items():
        if not rows:
            continue
        low, high = rows[0], rows[-1]
        parts.append(
            f"at {horizon}: predicted {low['predicted']:.3f} vs observed {low['observed']:.3f} "
            f"(lowest-risk group), {high['predicted']:.3f} vs {high['observed']:.3f} (highest)"
        )
    if not parts:
        return ""
    return (
        f"survival calibration ({calibration.get('groups')}, observed = Kaplan-Meier risk): "
        + "; ".join(parts)
    )


def summarize_fairness(result: Mapping[str, Any]) -> str:
    task = result.get("task", "")
    metric = card_html.HEADLINE.get(task, ("",))[0]
    lines = []
    for column, rows in result.get("subgroups", {}).items():
        for row in rows:
            if row["flagged"]:
                why = str(row.get("reason") or "below min n").removesuffix(": not reported")
                lines.append(f"{column}={row['level']} n={row['n']}: not reported ({why})")
            else:
                lines.append(
                    f"{column}={row['level']} n={row['n']}: {metric} "
                    f"{_fmt_entry(row['metrics'].get(metric))}"
                )
    if not lines:
        return ""
    synthetic = result.get("synthetic_subgroups") or []
    note = (
        f" [synthetic, randomly assigned subgroup columns: {', '.join(synthetic)}]"
        if synthetic
        else ""
    )
    return "; ".join(lines) + note


def _global_importance(gov: GovernanceStore, version: ModelVersion) -> dict[str, Any]:
    """Computed at registration by monitoring/explain; a named empty section when absent."""
    try:
        _, importance = MonitoringStore(gov.store).reference(version.model_name, version.version)
    except Exception as exc:  # monitoring not installed or no reference: the card still shows
        return {"status": f"not computed ({type(exc).__name__})"}
    if not importance:
        return {"status": "not computed for this version"}
    return {"status": "computed at registration", **importance}


def build_card(gov: GovernanceStore, version: ModelVersion) -> dict[str, Any]:
    """The full card of one version, with what is missing and what disagrees."""
    name, number = version.model_name, version.version
    author = gov.card(name, number)
    evaluations = gov.evaluations(name, number)
    training = gov.training_run(name, number)
    criteria = gov.criteria(name, number)
    signature = Signature.model_validate(version.signature)
    test_eval = next((e for e in evaluations if e["kind"] == "test"), None)
    external = next((e for e in evaluations if e["kind"] == "external"), None)
    local = next((e for e in evaluations if e["kind"] == "local"), None)
    problems: list[str] = []

    derived_inputs = derive_demographic_inputs(signature)
    stated = author.get("demographic_inputs") or {}
    demographic: dict[str, Any] = {}
    for category, features in derived_inputs.items():
        said = stated.get(category) if isinstance(stated, Mapping) else None
        entry = {"derived": bool(features), "features": features, "stated": said}
        if said is False and features:
            problems.append(
                f"demographic input '{category}': the author states it is not an input, "
                f"but the signature has {', '.join(features)}"
            )
        demographic[category] = entry
    task = (test_eval or {}).get("result", {}).get("task") or signature.task or "unknown"
    output_type = author.get("output_type") or {
        "binary": "prediction (risk of the positive class) with a classification at a threshold",
        "multiclass": "classification with class probabilities",
        "regression": "prediction (continuous value)",
        "survival": "prediction (relative risk score for time to event)",
        "generation": "generated text (a language model's answer; evaluated on cases)",
    }.get(task, signature.task or "")

    derived: dict[str, Any] = {
        "output_type": output_type,
        "demographic_inputs": "; ".join(
            f"{c}: {'yes (' + ', '.join(e['features']) + ')' if e['derived'] else 'no'}"
            + (" (author: yes)" if e["stated"] and not e["derived"] else "")
            for c, e in demographic.items()
        ),
        "validity_test": summarize_validity(test_eval["result"]) if test_eval else "",
        "fairness_test": summarize_fairness(test_eval["result"]) if test_eval else "",
    }
    if external:
        derived["validity_external"] = summarize_validity(external["result"])
        derived["fairness_external"] = summarize_fairness(external["result"])
    if local:
        derived["validity_local"] = summarize_validity(local["result"])
        derived["fairness_local"] = summarize_fairness(local["result"])

    hti1: dict[str, Any] = {}
    missing: list[str] = []
    for attr, label, key in HTI1_ATTRIBUTES:
        value = derived.get(attr) if attr in derived else None
        source = "derived" if _filled(value) else "author"
        if not _filled(value) and key:
            value = get_dotted(author, key)
        if attr == "fairness_test" and not _filled(value) and test_eval:
            value = "no subgroup was evaluated"
            source = "derived"
            problems.append("the test evaluation reports no subgroup: fairness is not assessed")
        ok = _filled(value)
        hti1[attr] = {"label": label, "value": value, "source": source, "filled": ok}
        if not ok:
            hint = f" (card key '{key}')" if key else " (needs a test evaluation)"
            missing.append(f"HTI-1 {attr}: {label}{hint}")
    for key in ("ethical_considerations", "caveats"):
        if not _filled(author.get(key)):
            missing.append(f"model card section: {key}")

    record = training or {}
    caveats = [author.get("caveats")] if author.get("caveats") else []
    if record.get("synthetic_subgroups"):
        caveats.append(
            "Subgroup columns "
            + ", ".join(record["synthetic_subgroups"])
            + " are SYNTHETIC (randomly assigned, seed-fixed) because the data lack them: they "
            "demonstrate the subgroup method and say nothing about real sex or age groups."
        )
    if record.get("final_fit", "").startswith("the registered model was refit"):
        caveats.append(record["final_fit"])
    horizon = (record.get("data") or {}).get("horizon_label")
    exclusions = None
    if horizon:
        exclusions = (
            f"{horizon['excluded_censored_before_horizon']} of {horizon['rows_with_outcome']} "
            f"patients were excluded: censored before the horizon ({horizon['horizon']:g}), "
            f"so whether {horizon['event']} happened by then is unknown. Label: {horizon['rule']}."
        )
        caveats.append(exclusions)
    warnings = list(record.get("warnings") or [])
    caveats += warnings

    sections: dict[str, Any] = {
        "model_details": {
            "name": name,
            "version": number,
            "description": version.description,
            "developer": author.get("developer"),
            "algorithm": record.get("algorithm"),
            "runtime": f"{version.runtime} ({version.runtime_reason})",
            "library_versions": version.library_versions,
            "created": version.created_at.isoformat(),
            "created_by": version.created_by,
        },
        "intended_use": {
            k: author.get(k)
            for k in ("intended_use", "intended_population", "intended_users", "decision_role")
        },
        "out_of_scope_use": author.get("cautioned_uses"),
        "factors": {
            "evaluated_subgroups": record.get("subgroups")
            or list((test_eval or {}).get("result", {}).get("subgroups", {})),
            "synthetic_subgroups": record.get("synthetic_subgroups", []),
            "author": author.get("factors"),
        },
        "metrics": {
            "reported": list((test_eval or {}).get("result", {}).get("metrics", {})),
            "threshold": (test_eval or {}).get("result", {}).get("threshold"),
            "confidence_intervals": (test_eval or {}).get("result", {}).get("bootstrap"),
        },
        "evaluation_data": [
            {
                "dataset": e["dataset_name"],
                "sha256": e["dataset_sha256"],
                "kind": e["kind"],
                "n": e["result"].get("n"),
                "evaluated": e["created_at"],
            }
            for e in evaluations
        ],
        "training_data": {
            "source": record.get("data", {}).get("source"),
            "sha256": record.get("data", {}).get("sha256"),
            "rows": record.get("data", {}).get("rows_used"),
            "split": record.get("split"),
            "criteria": author.get("training_criteria"),
            **({"exclusions": exclusions, "outcome_label": horizon} if horizon else {}),
        },
        "quantitative_analyses": {
            "overall": derived["validity_test"],
            "subgroups": derived["fairness_test"],
            **_survival_calibration(test_eval, local, external),
        },
        "ethical_considerations": author.get("ethical_considerations"),
        "caveats_and_recommendations": caveats,
    }
    return {
        "model": name,
        "version": number,
        "complete": not missing and not problems,
        "missing": missing,
        "problems": problems,
        "warnings": warnings,
        "model_card": sections,
        "hti1_source_attributes": hti1,
        "demographic_inputs": demographic,
        "acceptance_criteria": criteria,
        "training_record": record or None,
        "global_feature_importance": _global_importance(gov, version),
        "author_statements": author,
    }


def _survival_calibration(*evaluations: Mapping[str, Any] | None) -> dict[str, Any]:
    """The calibration tables of the stored survival evaluations, by evaluation kind."""
    tables = {
        e["kind"]: e["result"]["survival_calibration"]
        for e in evaluations
        if e and e["result"].get("survival_calibration")
    }
    return {"survival_calibration": tables} if tables else {}


def test_evaluation(gov: GovernanceStore, version: ModelVersion) -> dict[str, Any] | None:
    """The stored result of the version's test evaluation (else its latest): what the card's
    metric and subgroup tables and its plots show."""
    evaluations = gov.evaluations(version.model_name, version.version)
    chosen = next((e for e in evaluations if e["kind"] == "test"), None) or next(
        iter(evaluations), None
    )
    return dict(chosen["result"]) if chosen else None


def render_card_html(card: Mapping[str, Any], evaluation: Mapping[str, Any] | None = None) -> str:
    """The card as a standalone HTML page for people (``card_html``); ``evaluation``, the stored
    result of its test evaluation, adds the metric and subgroup tables and the plots."""
    return card_html.render_card_html(card, evaluation)

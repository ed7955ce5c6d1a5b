"""The promotion gate on the ``production`` alias.

Production needs: a complete model card, an evaluation meeting the version's declared acceptance
criteria, and a recorded train/test split with no patient on both sides (medserve's training record,
or, for a model trained elsewhere, the test evaluation's declared provenance). An ``each_subgroup``
criterion is met only when every subgroup was assessed: one below ``min_n`` or ``min_events``, or
not estimable, is reported as not assessable and blocks (an override can accept it). Otherwise
the move is refused with the full list of what is missing. An override needs a named approver
and a written reason, and both go into the alias history with the problems that were overridden.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medserve.core.errors import InvalidRequestError, PromotionBlockedError
from medserve.core.registry.entities import AliasEvent
from medserve.core.registry.service import Registry
from medserve.core.store.governance import GovernanceStore
from medserve.features.governance.cards import build_card

GATED_ALIASES = frozenset({"production"})
_OPS = {"min": lambda v, b: v >= b, "max": lambda v, b: v <= b}


@dataclass(frozen=True)
class GateResult:
    passed: bool
    problems: list[str]
    checked: list[str]
    # The command that fixes each problem, index for index with ``problems``.
    fixes: list[str] = field(default_factory=list)


def _fixes(name: str, version: int) -> dict[str, str]:
    """The command that fixes each kind of gate problem, for this version."""
    ref = f"{name}@{version}"
    evaluate = (
        f"medserve evaluate {ref} --data TEST.csv --label OUTCOME --kind test --subgroup COLUMN "
        '--split-declared "where the test data come from" '
        "[--patient-id ID_COLUMN --train-data TRAIN.csv]"
    )
    return {
        "card": f"medserve models card {ref} --template > card.yaml  # fill it in, then: "
        f"medserve models card {ref} --edit card.yaml",
        "criteria": f"declare an acceptance: block in the card file, then: "
        f"medserve models card {ref} --edit card.yaml",
        "evaluate": evaluate,
        "split": evaluate,
        "overlap": f"evaluate on data without the training patients: {evaluate}",
        "unmet": f"register a better version, or accept it explicitly: medserve models alias "
        f'{name} production {version} --override-approver "NAME" --reason "WHY"',
        "assess": f"evaluate on more data ({evaluate}), or accept it explicitly: medserve models "
        f'alias {name} production {version} --override-approver "NAME" --reason "WHY"',
    }


def _card_fix(problem: str) -> str:
    """Card problems fixed by an evaluation rather than by the author's statements."""
    if "needs a test evaluation" in problem or "reports no subgroup" in problem:
        return "evaluate"
    return "card"


def check_criteria(criteria: list[dict[str, Any]], result: dict[str, Any]) -> list[str]:
    """Problems with ``result`` (one stored evaluation) against ``criteria``; [] when all met."""
    problems = []
    for c in criteria:
        metric = str(c.get("metric", ""))
        stat = str(c.get("statistic", "value"))
        scope = str(c.get("scope", "overall"))
        bounds = {k: float(c[k]) for k in ("min", "max") if c.get(k) is not None}
        if not metric or not bounds or stat not in ("value", "ci_low", "ci_high"):
            problems.append(f"malformed acceptance criterion {c!r}")
            continue
        targets: list[tuple[str, dict[str, Any]]] = []
        if scope == "overall":
            targets.append(("overall", result.get("metrics", {})))
        elif scope == "each_subgroup":
            subgroups = result.get("subgroups", {})
            for column, rows in subgroups.items():
                for r in rows:
                    where = f"{column}={r['level']}"
                    if not r["flagged"]:
                        targets.append((where, r["metrics"]))
                        continue
                    # An unchecked subgroup is not a passed one: it blocks unless overridden.
                    why = str(r.get("reason") or f"n={r.get('n')} below the minimum")
                    why = why.removesuffix(": not reported")
                    problems.append(f"{metric} ({where}) is not assessable: {why}")
            if not subgroups or not any(subgroups.values()):
                problems.append(f"{metric}: no subgroup was evaluated to check 'each_subgroup'")
        else:
            problems.append(f"unknown scope {scope!r} in criterion for {metric}")
        for where, metrics in targets:
            value = (metrics.get(metric) or {}).get(stat)
            if value is None:
                problems.append(f"{metric} {stat} ({where}) is not available in the evaluation")
                continue
            for op, bound in bounds.items():
                if not _OPS[op](value, bound):
                    sign = ">=" if op == "min" else "<="
                    problems.append(
                        f"{metric} {stat} ({where}) = {value:.4f}, required {sign} {bound:g}"
                    )
    return problems


def check(registry: Registry, name: str, version: int) -> GateResult:
    """Every problem between this version and production, each with the command that fixes it.

    The train/test separation comes from medserve's training record when the version was trained
    here, else from the test evaluation's declared provenance (``medserve evaluate --kind test
    --split-declared ...``, optionally checked by patient ids against the training data): a model
    trained elsewhere reaches production without an override once its test set is declared."""
    gov = GovernanceStore(registry.store)
    mv = registry.store.get_version(name, version)
    found: list[tuple[str, str]] = []
    card = build_card(gov, mv)
    found += [(f"card incomplete: {m}", _card_fix(m)) for m in card["missing"]]
    found += [(f"card: {p}", _card_fix(p)) for p in card["problems"]]
    criteria = gov.criteria(name, version)
    evaluations = gov.evaluations(name, version)
    chosen = next((e for e in evaluations if e["kind"] == "test"), None) or next(
        iter(evaluations), None
    )
    if not criteria:
        found.append(("no acceptance criteria declared for this version", "criteria"))
    if chosen is None:
        found.append(("no stored evaluation for this version", "evaluate"))
    elif criteria:
        for problem in check_criteria(criteria, chosen["result"]):
            found.append((problem, "assess" if "not assessable" in problem else "unmet"))
    training = gov.training_run(name, version)
    split = (training or {}).get("split")
    if not split:
        split = _declared_split(chosen)
    if not split:
        found.append(
            (
                "no recorded train/test split: patient separation cannot be shown (the version "
                "was not trained by medserve, and no test evaluation declares its data's "
                "provenance)",
                "split",
            )
        )
    elif split.get("patient_overlap") != 0 and not _declared_unchecked(split):
        found.append(
            (f"{split.get('patient_overlap')} patients are in both train and test", "overlap")
        )
    separation = (
        _DECLARED_SEPARATION
        if split and _declared_unchecked(split)
        else "train/test patient separation"
    )
    checked = ["model card", "acceptance criteria", separation]
    commands = _fixes(name, version)
    return GateResult(
        not found, [p for p, _ in found], checked, [commands[kind] for _, kind in found]
    )


_DECLARED_SEPARATION = "train/test separation as the author declared it (no patient ids compared)"


def _declared_unchecked(split: dict[str, Any]) -> bool:
    """An author's declaration with no patient ids to compare (``patient_overlap`` None): the
    declaration is what the gate accepts. Anywhere else an unknown overlap blocks."""
    return bool(split.get("declared")) and split.get("patient_overlap") is None


def _declared_split(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    """The split a test evaluation declared (``medserve evaluate --kind test --split-declared``)."""
    if evaluation is None or evaluation["kind"] != "test":
        return None
    split = (evaluation["result"].get("dataset") or {}).get("split")
    return split if isinstance(split, dict) and split.get("declared") else None


def set_alias_gated(
    registry: Registry,
    name: str,
    alias: str,
    version: int,
    *,
    actor: str,
    reason: str = "",
    override_approver: str | None = None,
) -> AliasEvent:
    """Move ``alias``; for gated aliases run the gate first.

    ``override_approver`` (with a non-empty ``reason``) moves a gated alias despite problems;
    without both, a blocked move raises ``PromotionBlockedError`` listing every problem."""
    if alias not in GATED_ALIASES:
        return registry.set_alias(name, alias, version, actor=actor, reason=reason)
    result = check(registry, name, version)
    if result.passed:
        separation = (
            "test set's separation declared by the author, not checked by patient id"
            if _DECLARED_SEPARATION in result.checked
            else "no patient overlap"
        )
        text = f"promotion gate passed (card complete, acceptance criteria met, {separation})"
        return registry.set_alias(
            name, alias, version, actor=actor, reason=f"{text}; {reason}" if reason else text
        )
    if override_approver is not None:
        approver = override_approver.strip()
        if not approver or not reason.strip():
            raise InvalidRequestError("a gate override needs a named approver and a written reason")
        text = (
            f"OVERRIDE by {approver}: {reason.strip()} "
            f"(overrode {len(result.problems)} gate problems: {'; '.join(result.problems)})"
        )
        return registry.set_alias(name, alias, version, actor=actor, reason=text)
    raise PromotionBlockedError(
        f"promotion of {name} v{version} to {alias} refused: {len(result.problems)} problems",
        details=[
            {"message": p, "fix": f} for p, f in zip(result.problems, result.fixes, strict=True)
        ],
    )

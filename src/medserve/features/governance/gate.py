"""The promotion gate on the ``production`` alias.

Production needs: a complete model card, an evaluation meeting the version's declared acceptance
criteria, and a recorded train/test split with no patient on both sides. An ``each_subgroup``
criterion is met only when every subgroup was assessed: one below ``min_n`` or ``min_events``, or
not estimable, is reported as not assessable and blocks (an override can accept it). Otherwise
the move is refused with the full list of what is missing. An override needs a named approver
and a written reason, and both go into the alias history with the problems that were overridden.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    gov = GovernanceStore(registry.store)
    mv = registry.store.get_version(name, version)
    problems: list[str] = []
    card = build_card(gov, mv)
    problems += [f"card incomplete: {m}" for m in card["missing"]]
    problems += [f"card: {p}" for p in card["problems"]]
    criteria = gov.criteria(name, version)
    evaluations = gov.evaluations(name, version)
    chosen = next((e for e in evaluations if e["kind"] == "test"), None) or next(
        iter(evaluations), None
    )
    if not criteria:
        problems.append("no acceptance criteria declared for this version")
    if chosen is None:
        problems.append("no stored evaluation for this version")
    elif criteria:
        problems += check_criteria(criteria, chosen["result"])
    training = gov.training_run(name, version)
    split = (training or {}).get("split")
    if not split:
        problems.append("no recorded train/test split: patient separation cannot be shown")
    elif split.get("patient_overlap") != 0:
        problems.append(f"{split.get('patient_overlap')} patients are in both train and test")
    checked = ["model card", "acceptance criteria", "train/test patient separation"]
    return GateResult(not problems, problems, checked)


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
        text = "promotion gate passed (card complete, acceptance criteria met, no patient overlap)"
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
        details=[{"message": p} for p in result.problems],
    )

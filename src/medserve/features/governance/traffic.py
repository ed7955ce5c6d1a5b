"""Canary and shadow traffic: changing an alias's split (through the promotion gate and the audit
trail) and comparing the versions that share it.

A split ``{3: 90, 4: 10}`` on ``production`` points the alias at the version with the largest
share (3: what a client without a split would get, what rollback returns to) and lets version 4
answer 10% of the requests, chosen by a hash of the request (of the patient when the caller names
one, so a patient stays on one version). A shadow version gets a copy of every request of the
alias; what it answers is stored beside the live answer and never returned.

Every version that answers a gated alias's requests passes the gate first (a canary answers real
patients: it is a promotion of a share of them); a shadow answers no one, so it is not gated, but
its addition is audited like every split change.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from medserve.core.errors import AliasNotFoundError, InvalidRequestError, PromotionBlockedError
from medserve.core.registry.service import Registry
from medserve.core.store.monitoring import MonitoringStore
from medserve.core.store.traffic import TrafficPolicy, TrafficStore
from medserve.features.governance.gate import GATED_ALIASES, check, set_alias_gated

MAX_VERSION = 2**31 - 1  # what the store's version column holds
_SPLIT_ITEM = re.compile(r"^\s*(\d+)\s*[:=]\s*(\d+)\s*$")


def parse_split(text: str) -> dict[int, int]:
    """``"3:90,4:10"`` -> ``{3: 90, 4: 10}`` (the CLI's form)."""
    split: dict[int, int] = {}
    for item in text.split(","):
        found = _SPLIT_ITEM.match(item)
        if found is None:
            raise InvalidRequestError(
                f"split: {item.strip()!r} is not VERSION:PERCENT (e.g. --split 3:90,4:10)"
            )
        split[int(found[1])] = int(found[2])
    return split


def check_split(split: dict[int, int]) -> None:
    if not split:
        raise InvalidRequestError("split: name at least one version and its percentage")
    if any(w < 0 or w > 100 for w in split.values()):
        raise InvalidRequestError("split: each percentage must be between 0 and 100")
    if sum(split.values()) != 100:
        raise InvalidRequestError(
            f"split: the percentages must add up to 100, not {sum(split.values())}"
        )


def primary_of(split: dict[int, int], current: int | None) -> int:
    """The version the alias itself points at: the largest share (ties: the current one, else
    the lowest version)."""
    top = max(split.values())
    tied = sorted(v for v, w in split.items() if w == top)
    return current if current in tied else tied[0]


@dataclass(frozen=True)
class SplitChange:
    policy: TrafficPolicy
    gate: str  # what the gate said, as recorded


def set_traffic(
    registry: Registry,
    name: str,
    alias: str,
    split: dict[int, int],
    shadows: list[int] | None = None,
    *,
    actor: str,
    reason: str = "",
    override_approver: str | None = None,
) -> SplitChange:
    """Set ``alias``'s split (percent per version, adding up to 100) and its shadows.

    ``{4: 100}`` (or a split whose largest share is a new version) moves the alias itself,
    through the gate; ``{3: 100}`` with no shadow ends a canary. Raises
    ``PromotionBlockedError`` listing every problem of every version that would answer, unless
    ``override_approver`` and ``reason`` are given (recorded with the problems overridden)."""
    check_split(split)
    shadows = sorted(set(shadows or []))
    if any(not 1 <= v <= MAX_VERSION for v in [*split, *shadows]):
        raise InvalidRequestError(f"split: versions are numbers from 1 to {MAX_VERSION}")
    split = {v: w for v, w in split.items() if w > 0}
    aliases = registry.store.list_aliases(name)  # raises ModelNotFoundError
    current = aliases.get(alias)
    primary = primary_of(split, current)
    canaries = {v: w for v, w in split.items() if v != primary}
    if set(split) & set(shadows):  # said before the gate's long list, which would hide it
        raise InvalidRequestError("split: a version cannot be both a canary and a shadow")
    gate = "not gated"
    if alias in GATED_ALIASES:
        problems = []
        for version in sorted(canaries):
            result = check(registry, name, version)
            problems += [f"v{version}: {p}" for p in result.problems]
        if problems and override_approver is None:
            raise PromotionBlockedError(
                f"traffic split of {name} {alias} refused: {len(problems)} gate problems",
                details=[{"message": p} for p in problems],
            )
        if problems:
            approver = (override_approver or "").strip()
            if not approver or not reason.strip():
                raise InvalidRequestError(
                    "a gate override needs a named approver and a written reason"
                )
            gate = (
                f"OVERRIDE by {approver}: {reason.strip()} (overrode {len(problems)} gate "
                f"problems: {'; '.join(problems)})"
            )
        else:
            gate = "promotion gate passed for every canary version" if canaries else "gated"
    if primary != current:
        set_alias_gated(
            registry,
            name,
            alias,
            primary,
            actor=actor,
            reason=reason or "largest share of a traffic split",
            override_approver=override_approver,
        )
    text = gate if not reason or gate.startswith("OVERRIDE") else f"{gate}; {reason}"
    policy = TrafficStore(registry.store).set_routes(
        name, alias, canaries, shadows, actor=actor, reason=text
    )
    return SplitChange(policy, gate)


# -- comparing the versions that share an alias ----------------------------------------------


def _label(outputs: dict[str, Any]) -> Any:
    for key in ("label", "prediction", "predictions", "value"):
        if key in outputs:
            return outputs[key]
    for value in outputs.values():
        if not isinstance(value, list | dict):
            return value
    return None


def _agree(predicted: Any, outcome: Any) -> float | None:
    """1/0 where a label meets its outcome; the absolute error where both are numbers."""
    if predicted is None or outcome is None:
        return None
    if isinstance(predicted, str) or isinstance(outcome, str) or isinstance(predicted, bool):
        return float(str(predicted) == str(outcome))
    try:
        p, o = float(predicted), float(outcome)
    except (TypeError, ValueError):
        return None
    if p.is_integer() and o.is_integer():
        return float(p == o)
    return abs(p - o)


def _latency(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean_ms": None, "p50_ms": None, "p95_ms": None}
    ordered = sorted(values)
    return {
        "mean_ms": round(statistics.fmean(ordered), 3),
        "p50_ms": round(ordered[len(ordered) // 2], 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
    }


def compare(
    registry: Registry, name: str, alias: str = "production", hours: float = 24.0
) -> dict[str, Any]:
    """The versions that answered ``name``'s requests in the last ``hours`` (from the
    prediction log: volume, share, latency and, once outcomes arrive, performance) and what
    its shadows answered next to the live version (agreement, latency, failures)."""
    if not 0 < hours <= 24 * 90:
        raise InvalidRequestError("hours must be between 0 and 2160 (90 days)")
    end = datetime.now(UTC) + timedelta(seconds=1)
    start = end - timedelta(hours=hours)
    traffic = TrafficStore(registry.store)
    try:
        policy: dict[str, Any] | None = traffic.policy(name, alias).to_dict()
    except AliasNotFoundError:  # no such alias (ModelNotFoundError propagates)
        policy = None
    by_version: dict[int, dict[str, list[Any]]] = {}
    for p in MonitoringStore(registry.store).predictions(name, start, end):
        entry = by_version.setdefault(p.version, {"latency": [], "scores": []})
        if p.latency_ms is not None:
            entry["latency"].append(float(p.latency_ms))
        if p.outcome is not None:
            score = _agree(_label(p.outputs), p.outcome)
            if score is not None:
                entry["scores"].append(score)
    total = sum(len(e["latency"]) for e in by_version.values()) or 1
    versions = []
    for version, entry in sorted(by_version.items()):
        scores = entry["scores"]
        versions.append(
            {
                "version": version,
                "predictions": len(entry["latency"]),
                "share": round(len(entry["latency"]) / total, 4),
                "latency": _latency(entry["latency"]),
                "labelled": len(scores),
                # accuracy for labels, mean absolute error for numbers (agreement with outcomes)
                "performance": round(statistics.fmean(scores), 4) if scores else None,
            }
        )
    shadows: dict[int, dict[str, Any]] = {}
    for row in traffic.shadow_results(name, since=start):
        s = shadows.setdefault(
            int(row["shadow_version"]),
            {"live": [], "shadow": [], "agree": [], "failed": 0, "requests": 0},
        )
        s["requests"] += 1
        s["live"].append(float(row["live_ms"]))
        if row["failed"]:
            s["failed"] += 1
            continue
        if row["shadow_ms"] is not None:
            s["shadow"].append(float(row["shadow_ms"]))
        if row["agree"] is not None:
            s["agree"].append(float(row["agree"]))
    shadow_view = [
        {
            "version": version,
            "requests": s["requests"],
            "failed": s["failed"],
            "agreement": round(statistics.fmean(s["agree"]), 4) if s["agree"] else None,
            "live_latency": _latency(s["live"]),
            "shadow_latency": _latency(s["shadow"]),
        }
        for version, s in sorted(shadows.items())
    ]
    return {
        "model": name,
        "alias": alias,
        "window_hours": hours,
        "traffic": policy,
        "versions": versions,
        "shadows": shadow_view,
    }

"""Roles x actions x models x tenants: the one authorization rule, kept pure and small.

Actions are endpoint groups, not endpoints: a new route only has to say which group it is in.
Tenancy is deny-by-default: a key bound to a tenant sees only models assigned to that tenant;
keys without a tenant (operators) see every model.
"""

from __future__ import annotations

from collections.abc import Mapping

from medserve.core.context import Principal
from medserve.core.errors import PermissionDeniedError

ACTIONS = (
    "predict",  # inference: v2 infer/metadata/ready, records predict, outcomes reporting
    "read_models",  # registry views: models, versions, cards, evaluations
    "write",  # register, edit, evaluate, move non-production aliases
    "approve",  # move the production alias (promotion, rollback)
    "read_audit",  # the audit trail
    "read_monitoring",  # metrics, drift, live performance, alerts
    "read_metrics",  # GET /metrics only (a Prometheus scraper's key: role "metrics")
    "admin",  # keys, tenants, anything else
    "erase",  # a patient's erasure (POST /v1/patients/erase): admin only
)

ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "admin": frozenset(ACTIONS),
    "developer": frozenset({"read_models", "write", "predict", "read_monitoring", "read_metrics"}),
    "approver": frozenset({"read_models", "approve", "read_monitoring", "read_metrics"}),
    "app": frozenset({"predict"}),
    "auditor": frozenset({"read_audit", "read_monitoring", "read_models", "read_metrics"}),
    # a scraper's key: /metrics and nothing else (no models, no predictions, no audit)
    "metrics": frozenset({"read_metrics"}),
}
ROLES = tuple(ROLE_ACTIONS)


def allowed_actions(roles: frozenset[str]) -> frozenset[str]:
    out: frozenset[str] = frozenset()
    for role in roles:
        out |= ROLE_ACTIONS.get(role, frozenset())
    return out


def model_visible(principal: Principal, model: str, tenants: Mapping[str, str]) -> bool:
    """Whether ``principal`` may see ``model`` at all (grants and tenancy, not the action)."""
    if principal.models is not None and model not in principal.models:
        return False
    return principal.tenant is None or tenants.get(model) == principal.tenant


def check(principal: Principal, action: str, model: str | None, tenants: Mapping[str, str]) -> None:
    """Raise ``PermissionDeniedError`` unless ``principal`` may do ``action`` on ``model``."""
    if action not in allowed_actions(principal.roles):
        roles = ", ".join(sorted(principal.roles)) or "none"
        raise PermissionDeniedError(f"roles [{roles}] do not allow '{action}'")
    if model is not None and not model_visible(principal, model, tenants):
        raise PermissionDeniedError(f"this credential has no access to model {model!r}")

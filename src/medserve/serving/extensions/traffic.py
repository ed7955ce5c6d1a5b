"""HTTP extension: canary and shadow traffic — an alias's split, and comparing its versions.

``GET /v1/models/{name}/traffic/{alias}`` shows a split, ``PUT`` changes it (through the
promotion gate for ``production``, audited: action ``approve`` there, ``write`` elsewhere),
``GET /v1/models/{name}/compare`` compares the versions that answered and the shadows. Every
server process follows a change on its next registry poll (``MEDSERVE_RELOAD_INTERVAL_S``), Ray
replicas included. The routes are plain ``def`` (their SQL runs in FastAPI's thread pool).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from medserve.core.errors import InvalidRequestError
from medserve.core.store.traffic import TrafficStore
from medserve.features.governance.traffic import compare, set_traffic
from medserve.serving.extension import ServingExtension
from medserve.serving.resources import principal_of, resources_of

router = APIRouter(tags=["traffic"])


class TrafficChange(BaseModel):
    split: dict[str, int] = Field(
        description='Percent per version, adding up to 100: {"3": 90, "4": 10}.',
        examples=[{"3": 90, "4": 10}],
    )
    shadow: list[int] = Field(
        default_factory=list, description="Versions that get a copy of every request."
    )
    reason: str = Field(default="", max_length=2000)
    override_approver: str | None = Field(
        default=None, description="Move despite gate problems: a named approver (and a reason)."
    )


def _split(raw: dict[str, int]) -> dict[int, int]:
    split = {}
    for key, weight in raw.items():
        if not key.isdigit():
            raise InvalidRequestError(
                f"split: key {key!r} must be a version number",
                details=[{"field": f"split.{key}", "rule": "version number"}],
            )
        split[int(key)] = weight
    return split


@router.get("/v1/models/{name}/traffic/{alias}")
def get_traffic(request: Request, name: str, alias: str) -> dict[str, Any]:
    """The alias's split (percent per version) and shadows."""
    registry = resources_of(request).registry
    return TrafficStore(registry.store).policy(name, alias).to_dict()


# action: ``approve`` for production, ``write`` for other aliases (as alias moves are)
@router.put("/v1/models/{name}/traffic/{alias}")
def put_traffic(request: Request, name: str, alias: str, change: TrafficChange) -> dict[str, Any]:
    """Change the alias's split: every version that would answer ``production`` passes the
    promotion gate (or an override with approver and reason); the change is audited."""
    registry = resources_of(request).registry
    actor = principal_of(request).subject
    done = set_traffic(
        registry,
        name,
        alias,
        _split(change.split),
        change.shadow,
        actor=actor,
        reason=change.reason,
        override_approver=change.override_approver,
    )
    return {**done.policy.to_dict(), "gate": done.gate}


@router.get("/v1/models/{name}/compare", openapi_extra={"x-medserve-action": "read_monitoring"})
def compare_versions(
    request: Request,
    name: str,
    alias: str = "production",
    hours: float = Query(default=24.0, gt=0, le=2160),
) -> dict[str, Any]:
    """The versions that answered (volume, share, latency, performance once outcomes arrive)
    and the shadows next to the live version (agreement, latency, failures)."""
    return compare(resources_of(request).registry, name, alias, hours)


class TrafficExtension(ServingExtension):
    """Canary and shadow traffic: splits and comparisons."""

    name = "traffic"
    order = 25
    router = router


extension = TrafficExtension()

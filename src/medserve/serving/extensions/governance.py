"""HTTP extension: governance — model cards, evaluations and reports, the promotion gate.

Cards are built on request from stored statements and evaluations (cheap: a few small queries),
so they always reflect the latest evaluation. Nothing here touches the prediction hot path.
The routes are plain ``def``: their SQL (and artifact reads) are synchronous, so FastAPI runs
them in its thread pool rather than on the event loop.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from medserve.core.errors import NotFoundError
from medserve.core.registry.service import Registry
from medserve.core.store.governance import GovernanceStore
from medserve.features.governance.cards import build_card, render_card_html, test_evaluation
from medserve.features.governance.gate import check
from medserve.serving.extension import ServingExtension
from medserve.serving.resources import resources_of

router = APIRouter(tags=["governance"])


def _registry(request: Request) -> Registry:
    return resources_of(request).registry


def _wants_html(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "html"
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept


@router.get("/v1/models/{name}/versions/{version}/card", response_model=None)
def model_card(request: Request, name: str, version: str, format: str | None = None) -> Response:
    """The model card as JSON, or HTML with ``Accept: text/html`` or ``?format=html``."""
    registry = _registry(request)
    mv = registry.store.resolve(name, version)
    gov = GovernanceStore(registry.store)
    card = build_card(gov, mv)
    if _wants_html(request, format):
        return HTMLResponse(render_card_html(card, test_evaluation(gov, mv)))
    return JSONResponse(card)


@router.get("/v1/models/{name}/versions/{version}/evaluations")
def evaluations(request: Request, name: str, version: str) -> dict[str, Any]:
    registry = _registry(request)
    mv = registry.store.resolve(name, version)
    items = GovernanceStore(registry.store).evaluations(name, mv.version)
    return {"model": name, "version": mv.version, "evaluations": items}


@router.get("/v1/models/{name}/versions/{version}/report", response_class=HTMLResponse)
def report(request: Request, name: str, version: str) -> HTMLResponse:
    """The HTML report of the most recent evaluation with one."""
    registry = _registry(request)
    mv = registry.store.resolve(name, version)
    items = GovernanceStore(registry.store).evaluations(name, mv.version)
    sha = next((e["report_sha256"] for e in items if e["report_sha256"]), None)
    if sha is None:
        raise NotFoundError(f"{name} v{mv.version} has no evaluation report")
    return HTMLResponse(registry.artifacts.read_bytes(sha).decode())


@router.get("/v1/models/{name}/versions/{version}/gate")
def gate(request: Request, name: str, version: str) -> dict[str, Any]:
    """Whether this version may become production, and if not, everything missing."""
    registry = _registry(request)
    mv = registry.store.resolve(name, version)
    result = check(registry, name, mv.version)
    return {
        "model": name,
        "version": mv.version,
        "passed": result.passed,
        "problems": result.problems,
        "fixes": result.fixes,
    }


class GovernanceExtension(ServingExtension):
    """Model cards, evaluations and reports, the promotion gate."""

    name = "governance"
    order = 20
    router = router


extension = GovernanceExtension()

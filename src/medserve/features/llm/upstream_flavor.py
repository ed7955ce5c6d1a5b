"""The ``openai-upstream`` flavor's loader: the version's artifact is its route file
(``upstream_route.py``); the runtime (``upstream.py``: httpx, tenacity) is imported only when a
version of the flavor loads, so listing the flavors stays cheap."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from medserve.core.errors import InvalidRequestError, ModelLoadError
from medserve.core.extensions import FlavorOptions
from medserve.features.llm.upstream_route import FLAVOR, parse_route

if TYPE_CHECKING:
    from medserve.features.llm.upstream import UpstreamRuntime

__all__ = ["FLAVOR", "load_upstream"]


def load_upstream(path: Path, options: FlavorOptions) -> UpstreamRuntime:
    """The ``openai-upstream`` flavor's loader: the route file is the artifact."""
    try:
        route = parse_route(path.read_bytes())
    except InvalidRequestError as exc:
        raise ModelLoadError(exc.message) from exc
    # lazy import: httpx clients and tenacity only where a route is served
    from medserve.features.llm.upstream import UpstreamRuntime  # noqa: PLC0415

    return UpstreamRuntime(route)

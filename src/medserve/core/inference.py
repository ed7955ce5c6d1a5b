"""What a capability may ask of the serving layer, as a protocol: features call models through it
without importing the data plane (which sits a layer above them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from medserve.core.context import RequestContext
from medserve.core.loaded_model import LoadedModel


class ModelServer(Protocol):
    """The part of the data plane a feature uses: which versions are served, load one, predict."""

    def list_served(self) -> list[dict[str, Any]]: ...

    async def model(
        self, name: str, ref: str | None, context: RequestContext | None = None
    ) -> LoadedModel: ...

    async def predict_records(
        self, name: str, ref: str | None, body: Any, context: RequestContext | None = None
    ) -> dict[str, Any]: ...


Rationales = Callable[[LoadedModel, list[dict[str, Any]], str | None], Awaitable[list[str | None]]]
"""Top attributions of each row in plain words (or ``None`` where none can be given): how a
feature asks for explanations without importing the explain feature."""

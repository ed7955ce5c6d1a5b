"""HTTP extensions: each capability (governance, security, monitoring, interoperability) brings
its routes and a lifespan hook that wires it into the server (observers, guard, media handlers).

An extension module exposes ``router`` (a FastAPI ``APIRouter``) and ``lifespan(api)`` (an async
context manager entered at start-up, after the data plane exists: ``api.state`` holds
``settings``, ``registry``, ``plane``, ``guard`` and ``media_handlers``).
"""

from __future__ import annotations

from types import ModuleType

from medserve.serving.extensions import governance, interop, modalities, monitoring, security

EXTENSIONS: list[ModuleType] = [security, governance, monitoring, interop, modalities]

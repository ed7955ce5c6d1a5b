"""The extension seam: how a capability plugs into medserve.

A capability is an :class:`Extension` object named by a ``medserve.extensions`` entry point (in
``pyproject.toml``: ``[project.entry-points."medserve.extensions"] name = "module:object"``). The
built-in capabilities are registered exactly so, and a separately installed package adds one the
same way. This module holds what the core layer consumes (runtime flavors, registry event
handlers, CLI groups for the CLI root); ``medserve.serving.extension.ServingExtension`` adds what
a server consumes (routes, typed lifespan resources, middleware, pipeline hooks, media codecs).
Nothing below the faces layer knows which extensions exist: they are found at run time.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medserve.core.errors import MedserveError

if TYPE_CHECKING:
    from medserve.core.artifacts import ArtifactStore
    from medserve.core.registry.events import RegistryEvent
    from medserve.core.runtimes.base import Runtime

ENTRY_POINT_GROUP = "medserve.extensions"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FlavorOptions:
    """What a runtime flavor's loader may use besides the (integrity-checked) artifact path."""

    intra_op_threads: int = 1
    trust_pickle: bool = False
    artifacts: ArtifactStore | None = None  # ensembles load their members from the store


FlavorLoader = Callable[[Path, FlavorOptions], "Runtime"]
RegistryHandler = Callable[["RegistryEvent"], None]


class Extension:
    """A capability. Override what it contributes; every contribution defaults to nothing.

    ``order`` places it among the others where order matters (lifespans are entered, and
    middleware wrapped, in ascending order).
    """

    name: str = ""
    order: int = 100

    def runtime_flavors(self) -> Mapping[str, FlavorLoader]:
        """Runtime flavors by name, looked up by the runtime loader."""
        return {}

    def registry_handlers(self) -> Sequence[RegistryHandler]:
        """Called with every registry event (each handler picks the types it wants)."""
        return ()

    def cli_groups(self) -> Sequence[Any]:
        """``typer.Typer`` command groups (each with its own ``name``) for the ``medserve`` CLI."""
        return ()


class ExtensionError(MedserveError):
    code = "extension_error"


@functools.cache
def extensions() -> tuple[Extension, ...]:
    """Every installed extension, loaded once per process, in ``order`` then name."""
    found: list[Extension] = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        obj = point.load()
        if not isinstance(obj, Extension):
            raise ExtensionError(
                f"entry point {point.name!r} ({point.value}) is not a medserve Extension"
            )
        found.append(obj)
    if not found:  # an install without its entry points serves no extension's flavor or route
        log.warning(
            "no %s entry points: is medserve installed (pip install -e .)?", ENTRY_POINT_GROUP
        )
    return tuple(sorted(found, key=lambda e: (e.order, e.name)))


def emit(event: RegistryEvent) -> None:
    """Hand ``event`` to every extension's registry handlers; a failing handler is logged."""
    for extension in extensions():
        for handler in extension.registry_handlers():
            try:
                handler(event)
            except Exception as exc:
                log.warning(
                    "%s: handler of %s failed: %s",
                    extension.name,
                    type(event).__name__,
                    type(exc).__name__,
                )

"""The composition capability as an extension: the ``ensemble`` runtime flavor."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from medserve.core.extensions import Extension, FlavorLoader, FlavorOptions
from medserve.core.runtimes.base import Runtime
from medserve.features.composition.ensemble import EnsembleRuntime


def _ensemble(path: Path, options: FlavorOptions) -> Runtime:
    """JSON pinning member versions + a combiner; members load from the artifact store."""
    return EnsembleRuntime.from_path(
        path, artifacts=options.artifacts, intra_op_threads=options.intra_op_threads
    )


class CompositionExtension(Extension):
    name = "composition"
    order = 60

    def runtime_flavors(self) -> Mapping[str, FlavorLoader]:
        return {"ensemble": _ensemble}


extension = CompositionExtension()

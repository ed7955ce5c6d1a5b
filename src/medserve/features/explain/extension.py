"""The explain capability as an extension: global importance of every profiled version."""

from __future__ import annotations

from collections.abc import Sequence

from medserve.core.extensions import Extension, RegistryHandler
from medserve.features.explain.service import on_reference_profiled


class ExplainExtension(Extension):
    name = "explain"
    order = 70

    def registry_handlers(self) -> Sequence[RegistryHandler]:
        return (on_reference_profiled,)


extension = ExplainExtension()

"""Registry events: how capabilities learn of registry changes without the registry calling them.

The registry emits these after a change is committed, through every discovered extension's
``registry_handlers`` (see ``medserve.core.extensions``), whether the change came over HTTP, from
the CLI or from the Python API. Handlers run in the emitting thread; one that fails is logged and
the change stands (a derived record such as a drift reference is then missing, and says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medserve.core.registry.entities import ModelVersion

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from medserve.core.loaded_model import LoadedModel
    from medserve.core.registry.service import Registry


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """Base of every event: the registry it happened in (its store and artifacts)."""

    registry: Registry


@dataclass(frozen=True, slots=True)
class VersionRegistered(RegistryEvent):
    """A new immutable version; ``sample`` is the registration sample when one was given."""

    version: ModelVersion
    sample: pd.DataFrame | None


@dataclass(frozen=True, slots=True)
class AliasMoved(RegistryEvent):
    """An alias now points at ``version`` (``None``: deleted); ``previous`` is where it was."""

    model: str
    alias: str
    version: int | None
    previous: int | None
    actor: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class ReferenceProfiled(RegistryEvent):
    """A version's drift reference was stored (by monitoring): the loaded model and the sample
    rows it was profiled on, for what builds on the reference (global importance)."""

    version: ModelVersion
    loaded: LoadedModel
    reference: dict[str, Any]
    rows: np.ndarray

"""Registry persistence chosen by URI: ``sqlite:///...`` (embedded default) or ``postgresql+psycopg://...``."""

from __future__ import annotations

from medserve.core.store.base import RegistryStore
from medserve.core.store.sql import SqlRegistryStore


def open_store(uri: str, *, run_migrations: bool = True) -> RegistryStore:
    """Open (and, unless told not to, migrate to the newest schema) the store at ``uri``."""

    return SqlRegistryStore(uri, run_migrations=run_migrations)


__all__ = ["RegistryStore", "open_store"]

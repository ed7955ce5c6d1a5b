"""Registry persistence chosen by URI: ``sqlite:///...`` (embedded default) or ``postgresql+psycopg://...``."""

from __future__ import annotations

from medserve.store.base import RegistryStore


def open_store(uri: str) -> RegistryStore:
    """Open (and migrate to head) the store at ``uri``."""
    from medserve.store.sql import SqlRegistryStore

    return SqlRegistryStore(uri)


__all__ = ["RegistryStore", "open_store"]

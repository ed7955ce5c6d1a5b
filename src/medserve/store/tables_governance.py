"""Tables of the governance capability, on the shared registry metadata (own alembic branch)."""

from __future__ import annotations

from medserve.store.schema import metadata

__all__ = ["metadata"]

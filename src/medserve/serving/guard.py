"""The authentication/authorization seam of the HTTP layer.

The fast path and the API call a ``Guard`` before doing anything for a request. ``OpenGuard``
(no credentials, everyone is an admin) is only for ``medserve demo`` and tests of the open
server; the security package provides the real one.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Protocol

from medserve.core.context import ANONYMOUS, Principal


class Guard(Protocol):
    async def authenticate(self, scope: MutableMapping[str, Any]) -> Principal:
        """Who is calling; raises ``AuthenticationError`` (401) or ``RateLimitedError`` (429)."""

    def authorize(self, principal: Principal, action: str, model: str | None) -> None:
        """Raises ``PermissionDeniedError`` (403) unless ``principal`` may do ``action``."""


class OpenGuard:
    async def authenticate(self, scope: MutableMapping[str, Any]) -> Principal:
        return ANONYMOUS

    def authorize(self, principal: Principal, action: str, model: str | None) -> None:
        return None

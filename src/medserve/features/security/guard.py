"""The real ``Guard``: API keys and OIDC JWTs, roles x actions x models x tenants, rate limits.

Hot-path cost on a cache hit: one dict lookup, one read of the security change counter (a few
microseconds on SQLite) and an expiry comparison. Any key or tenant change bumps the counter,
which empties this worker's caches, so a revoked key is refused on the next request everywhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from typing import Any

from medserve.core.context import PRINCIPAL_SCOPE_KEY, Principal
from medserve.core.errors import AuthenticationError
from medserve.features.security.keys import TOKEN_PREFIX, ApiKey, ChangeCounter, SecurityStore
from medserve.features.security.oidc import JwtVerifier
from medserve.features.security.permissions import check, model_visible
from medserve.features.security.ratelimit import RateLimiter, SharedRateLimiter

_CACHE_MAX = 10_000


def credential_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif key == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    return None


def _principal(key: ApiKey) -> Principal:
    return Principal(
        subject=f"key:{key.name}"[:256],
        kind="api_key",
        key_id=key.key_id,
        roles=frozenset(key.roles),
        tenant=key.tenant,
        models=frozenset(key.models) if key.models is not None else None,
    )


class SecurityGuard:
    def __init__(
        self,
        store: SecurityStore,
        counter: ChangeCounter,
        *,
        jwt_verifier: JwtVerifier | None = None,
        cache_ttl_s: float = 30.0,
        default_rate_limit: float = 0.0,
        workers: int = 1,
    ) -> None:
        self.store = store
        self.counter = counter
        self.jwt = jwt_verifier
        self.cache_ttl_s = cache_ttl_s
        self.default_rate_limit = default_rate_limit
        self.limiter = RateLimiter(workers)
        # set where replicas must share one count (the Ray backend on PostgreSQL): a database
        # statement per limited request, run off the event loop; None: ``limiter`` (no I/O)
        self.shared_limiter: SharedRateLimiter | None = None
        # token -> (principal, expires_at epoch or inf, cached_at monotonic, rate limit)
        self._keys: dict[str, tuple[Principal, float, float, float]] = {}
        self._generation = -1
        self._tenants: dict[str, str] = {}
        self._sync()

    def _sync(self) -> None:
        generation = self.counter.read()
        if generation != self._generation:
            self._keys.clear()
            self._tenants = self.store.model_tenants()
            self._generation = generation

    async def authenticate(self, scope: MutableMapping[str, Any]) -> Principal:
        """Resolve the credential on the event loop when everything needed is cached (the
        common case: no I/O), otherwise in a thread (a key lookup, a tenants reload or a JWKS
        fetch does I/O); rate-limit on the loop either way."""
        token = self._token(scope["headers"])
        resolved = self._from_cache(token)
        if resolved is None:
            resolved = await asyncio.to_thread(self._resolve, token)
        principal, rate = resolved
        if rate > 0 and self.shared_limiter is not None:
            key = principal.key_id or principal.subject
            await asyncio.to_thread(self.shared_limiter.check, key, rate)
            rate = 0.0  # counted
        return self._admit(principal, rate, scope)

    def authenticate_headers(
        self, headers: list[tuple[bytes, bytes]], scope: MutableMapping[str, Any] | None = None
    ) -> Principal:
        principal, rate = self._resolve(self._token(headers))
        return self._admit(principal, rate, scope)

    @staticmethod
    def _token(headers: list[tuple[bytes, bytes]]) -> str:
        token = credential_from_headers(headers)
        if token is None:
            raise AuthenticationError(
                "missing credential: send 'Authorization: Bearer <API key or token>'"
            )
        return token

    def _from_cache(self, token: str) -> tuple[Principal, float] | None:
        """The credential's principal and rate limit when answering needs no I/O, else None."""
        if self.counter.read() != self._generation:
            return None  # keys or tenants changed: reload them (in a thread)
        if token.startswith(TOKEN_PREFIX):
            return self._cached_key(token)
        if self.jwt is None:
            raise AuthenticationError("unknown, expired or revoked credential")
        return (self.jwt.verify(token), self.default_rate_limit) if self.jwt.cached(token) else None

    def _cached_key(self, token: str) -> tuple[Principal, float] | None:
        cached = self._keys.get(token)
        if cached is None or time.monotonic() - cached[2] >= self.cache_ttl_s:
            return None
        return (cached[0], cached[3]) if time.time() < cached[1] else None

    def _resolve(self, token: str) -> tuple[Principal, float]:
        self._sync()
        if token.startswith(TOKEN_PREFIX):
            return self._api_key(token)
        if self.jwt is not None and token.count(".") == 2:
            return self.jwt.verify(token), self.default_rate_limit
        raise AuthenticationError("unknown, expired or revoked credential")

    def _admit(
        self, principal: Principal, rate: float, scope: MutableMapping[str, Any] | None
    ) -> Principal:
        if rate > 0:
            (self.shared_limiter or self.limiter).check(principal.key_id or principal.subject, rate)
        if scope is not None:
            scope[PRINCIPAL_SCOPE_KEY] = principal
        return principal

    def _api_key(self, token: str) -> tuple[Principal, float]:
        cached = self._cached_key(token)
        if cached is not None:
            return cached
        now = time.monotonic()
        key = self.store.verify_key(token)
        if key is None:
            self._keys.pop(token, None)
            raise AuthenticationError("unknown, expired or revoked credential")
        expires = key.expires_at.timestamp() if key.expires_at is not None else float("inf")
        rate = float(key.rate_limit) if key.rate_limit is not None else self.default_rate_limit
        if len(self._keys) >= _CACHE_MAX:
            self._keys.clear()
        principal = _principal(key)
        self._keys[token] = (principal, expires, now, rate)
        return principal, rate

    def principal_for_key(self, key_id: str) -> Principal:
        """The principal of an active key, by id, read from the store now: for a caller that
        proved the key once and holds a session opened with it (the web console), not the key
        itself. A revoked, expired or unknown key raises ``AuthenticationError``."""
        key = next((k for k in self.store.list_keys() if k.key_id == key_id), None)
        if key is None or key.state() != "active":
            raise AuthenticationError("the key of this session is revoked or expired")
        return _principal(key)

    def authorize(self, principal: Principal, action: str, model: str | None) -> None:
        check(principal, action, model, self._tenants)

    def visible(self, principal: Principal, model: str) -> bool:
        """For listings: whether ``model`` may appear to ``principal``."""
        return model_visible(principal, model, self._tenants)

    def close(self) -> None:
        self.counter.close()

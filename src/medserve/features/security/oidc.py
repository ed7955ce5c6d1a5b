"""OAuth2/OIDC bearer JWTs verified against a configured issuer, audience and JWKS.

The JWKS comes from a file or an https URL (fetched by PyJWT's ``PyJWKClient``). Keys are
looked up by ``kid``; an unknown ``kid`` refetches the JWKS (at most once a minute, so forged kids
cannot make medserve hammer the issuer) and the issuer's key rotation is followed without a
restart. Signature checks cost tens of microseconds, so verified tokens are cached until they
expire (bounded).
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import jwt

from medserve.core.context import Principal
from medserve.core.errors import AuthenticationError
from medserve.features.security.permissions import ROLES

_REFETCH_MIN_S = 60.0
_CACHE_MAX = 10_000


class JwksSource:
    def __init__(self, location: str, *, refetch_min_s: float = _REFETCH_MIN_S) -> None:
        self.location = location
        self.refetch_min_s = refetch_min_s
        self._client = (
            jwt.PyJWKClient(location, timeout=10)
            if location.startswith(("https://", "http://"))
            else None
        )
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        if self._client is not None:
            jwks = self._client.get_jwk_set(refresh=True)
        else:
            jwks = jwt.PyJWKSet.from_json(Path(self.location).read_text())
        self._keys = {k.key_id or "": k for k in jwks.keys}
        self._fetched_at = time.monotonic()

    def key(self, kid: str | None) -> jwt.PyJWK:
        found = self._keys.get(kid or "")
        if found is None and kid is None and len(self._keys) == 1:
            found = next(iter(self._keys.values()))
        if found is None and time.monotonic() - self._fetched_at > self.refetch_min_s:
            with self._lock, contextlib.suppress(OSError, jwt.PyJWKClientError, jwt.PyJWKSetError):
                self._load()
            found = self._keys.get(kid or "")
        if found is None:
            raise AuthenticationError("bearer token signed by an unknown key")
        return found


class JwtVerifier:
    def __init__(
        self,
        *,
        issuer: str,
        audience: str | list[str],
        jwks: JwksSource,
        leeway_s: float = 60.0,
        algorithms: list[str] | None = None,
        roles_claim: str = "roles",
        tenant_claim: str = "tenant",
    ) -> None:
        self.issuer = issuer
        # several audiences, comma-separated: a CDS Hooks client puts the called service's URL in
        # `aud`, so a deployment lists its service URLs (any one of them is accepted)
        parts = audience.split(",") if isinstance(audience, str) else audience
        self.audience = [a.strip() for a in parts if a.strip()]
        self.jwks = jwks
        self.leeway_s = leeway_s
        self.algorithms = algorithms or ["RS256", "ES256"]
        self.roles_claim = roles_claim
        self.tenant_claim = tenant_claim
        self._cache: dict[str, tuple[Principal, float]] = {}

    def cached(self, token: str) -> bool:
        """Whether ``token`` was verified already and is still valid (no I/O to answer it)."""
        found = self._cache.get(token)
        return found is not None and found[1] + self.leeway_s > time.time()

    def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if cached is not None and cached[1] + self.leeway_s > time.time():
            return cached[0]
        try:
            header = jwt.get_unverified_header(token)
            key = self.jwks.key(header.get("kid"))
            # Only the key's own algorithm: a token cannot pick a weaker or mismatched one.
            if key.algorithm_name not in self.algorithms:
                raise AuthenticationError("bearer token key uses an algorithm not accepted here")
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("bearer token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthenticationError("bearer token is not for this audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthenticationError("bearer token is from an untrusted issuer") from exc
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            raise AuthenticationError(f"invalid bearer token ({type(exc).__name__})") from exc
        principal = self._principal(claims)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[token] = (principal, float(claims["exp"]))
        return principal

    def _principal(self, claims: dict[str, Any]) -> Principal:
        raw = claims.get(self.roles_claim, [])
        if isinstance(raw, str):
            raw = raw.split()
        roles = frozenset(str(r) for r in raw if str(r) in ROLES)
        tenant = claims.get(self.tenant_claim)
        models = claims.get("medserve_models")
        return Principal(
            subject=f"jwt:{claims['sub']}"[:256],
            kind="jwt",
            roles=roles,
            tenant=str(tenant) if tenant else None,
            models=frozenset(str(m) for m in models) if isinstance(models, list) else None,
            claims={"iss": claims["iss"], "sub": claims["sub"]},
        )

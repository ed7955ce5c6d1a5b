"""OIDC bearer JWTs: signature by the issuer's JWKS, issuer, audience, expiry and clock skew."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from medserve.core.errors import AuthenticationError
from medserve.features.security.oidc import JwksSource, JwtVerifier

ISSUER = "https://idp.hospital.example"
AUDIENCE = "medserve"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def verifier(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> JwtVerifier:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    public.update(kid="k1", use="sig", alg="RS256")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public]}))
    return JwtVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=JwksSource(str(path)), leeway_s=30)


def token(key: Any, *, kid: str = "k1", alg: str = "RS256", **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "dr-house",
        "iat": now,
        "exp": now + 300,
        "roles": ["app", "not-a-role"],
        "tenant": "A",
    }
    claims.update(overrides)
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def test_valid_token_maps_roles_and_tenant(
    verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    principal = verifier.verify(token(rsa_key))
    assert principal.kind == "jwt"
    assert principal.subject == "jwt:dr-house"
    assert principal.roles == frozenset({"app"})  # unknown roles are dropped
    assert principal.tenant == "A"


def test_expired_token_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(AuthenticationError, match="expired"):
        verifier.verify(token(rsa_key, exp=int(time.time()) - 120))


def test_clock_skew_within_leeway_accepted(
    verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert verifier.verify(token(rsa_key, exp=int(time.time()) - 10)).subject == "jwt:dr-house"
    with pytest.raises(AuthenticationError):
        verifier.verify(token(rsa_key, nbf=int(time.time()) + 600))


def test_wrong_audience_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(AuthenticationError, match="audience"):
        verifier.verify(token(rsa_key, aud="another-api"))


def test_wrong_issuer_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(AuthenticationError, match="issuer"):
        verifier.verify(token(rsa_key, iss="https://evil.example"))


def test_signature_by_another_key_refused(verifier: JwtVerifier) -> None:
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(AuthenticationError):
        verifier.verify(token(forger))
    with pytest.raises(AuthenticationError, match="unknown key"):
        verifier.verify(token(forger, kid="k9"))
    with pytest.raises(AuthenticationError):
        verifier.verify(token(ec.generate_private_key(ec.SECP256R1()), alg="ES256"))


def test_unsigned_and_hs256_tokens_refused(verifier: JwtVerifier) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 60}
    with pytest.raises(AuthenticationError):
        verifier.verify(jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"}))
    with pytest.raises(AuthenticationError):
        verifier.verify(jwt.encode(claims, "s" * 32, algorithm="HS256", headers={"kid": "k1"}))


def test_missing_subject_refused(verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}
    with pytest.raises(AuthenticationError):
        verifier.verify(jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "k1"}))


def test_several_audiences_accept_any_of_them(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    public.update(kid="k1", use="sig", alg="RS256")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public]}))
    services = "https://medserve.example/cds-services/cardio-risk, https://medserve.example/api"
    verifier = JwtVerifier(issuer=ISSUER, audience=services, jwks=JwksSource(str(path)))
    for aud in (
        "https://medserve.example/cds-services/cardio-risk",
        "https://medserve.example/api",
    ):
        assert verifier.verify(token(rsa_key, aud=aud, sub=aud)).subject == f"jwt:{aud}"
    with pytest.raises(AuthenticationError, match="audience"):
        verifier.verify(token(rsa_key, aud="https://medserve.example/cds-services/other"))


def test_a_jwks_url_is_fetched_and_followed_through_key_rotation(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    """The issuer's JWKS over HTTP (loopback): a token signed by a key added later is accepted
    once the kid is unknown and the refetch interval has passed; a forged kid is not."""
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        public.update(kid=kid, use="sig", alg="RS256")
        return public

    served = {"keys": [jwk(rsa_key, "k1")]}
    fetches: list[str] = []

    class Jwks(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetches.append(self.path)
            body = json.dumps(served).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        source = JwksSource(url, refetch_min_s=0.0)
        verifier = JwtVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=source)
        assert verifier.verify(token(rsa_key)).subject == "jwt:dr-house"
        served["keys"].append(jwk(rotated, "k2"))
        assert verifier.verify(token(rotated, kid="k2")).subject == "jwt:dr-house"
        with pytest.raises(AuthenticationError, match="unknown key"):
            verifier.verify(token(rotated, kid="forged"))
        assert len(fetches) == 3  # start, the rotation, the forged kid
        throttled = JwksSource(url)  # the default: at most one refetch a minute
        before = len(fetches)
        with pytest.raises(AuthenticationError, match="unknown key"):
            JwtVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=throttled).verify(
                token(rotated, kid="forged")
            )
        assert len(fetches) == before  # refused without asking the issuer again
    finally:
        server.shutdown()
        server.server_close()

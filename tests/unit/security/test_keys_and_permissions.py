"""API keys, the change counter, the guard's caches, and the roles x actions matrix."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from medserve.core.context import Principal
from medserve.core.errors import (
    AuthenticationError,
    InvalidRequestError,
    PermissionDeniedError,
    RateLimitedError,
)
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.tables_security import sec_api_keys
from medserve.features.security.guard import SecurityGuard
from medserve.features.security.keys import ChangeCounter, SecurityStore, parse_token, secret_sha256
from medserve.features.security.permissions import ACTIONS, ROLE_ACTIONS, check

EXPECTED = {
    # role: actions allowed (everything else is refused)
    "admin": set(ACTIONS),
    "developer": {"predict", "read_models", "write", "read_monitoring", "read_metrics"},
    "approver": {"read_models", "approve", "read_monitoring", "read_metrics"},
    "app": {"predict"},
    "auditor": {"read_audit", "read_monitoring", "read_models", "read_metrics"},
    "metrics": {"read_metrics"},  # a Prometheus scraper: /metrics and nothing else
}


@pytest.fixture
def store(registry: Registry) -> SecurityStore:
    return SecurityStore(registry.store.engine)  # type: ignore[attr-defined]


def _headers(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


@pytest.mark.parametrize("role", sorted(EXPECTED))
@pytest.mark.parametrize("action", ACTIONS)
def test_role_action_matrix(role: str, action: str) -> None:
    principal = Principal(subject="s", kind="api_key", roles=frozenset({role}))
    if action in EXPECTED[role]:
        check(principal, action, None, {})
    else:
        with pytest.raises(PermissionDeniedError, match=action):
            check(principal, action, None, {})
    assert set(ROLE_ACTIONS) == set(EXPECTED)


def test_model_grants_and_tenants() -> None:
    tenants = {"a-model": "A", "b-model": "B"}
    scoped = Principal(subject="s", roles=frozenset({"app"}), models=frozenset({"a-model"}))
    check(scoped, "predict", "a-model", tenants)
    with pytest.raises(PermissionDeniedError):
        check(scoped, "predict", "b-model", tenants)
    tenant_a = Principal(subject="s", roles=frozenset({"admin"}), tenant="A")
    check(tenant_a, "predict", "a-model", tenants)
    for other in ("b-model", "untenanted"):  # deny by default outside the tenant
        with pytest.raises(PermissionDeniedError):
            check(tenant_a, "predict", other, tenants)
    operator = Principal(subject="s", roles=frozenset({"admin"}))
    check(operator, "predict", "b-model", tenants)


def test_key_is_shown_once_and_stored_as_hash(store: SecurityStore) -> None:
    issued = store.create_key("ehr", ["app"], models=["m"], tenant="A", rate_limit=5)
    key_id, secret = parse_token(issued.token) or ("", "")
    assert key_id == issued.key.key_id
    assert len(secret) >= 43  # 256 bits, url-safe base64
    with store.engine.connect() as conn:
        dumped = repr(conn.execute(sa.select(sec_api_keys)).all())
    assert secret not in dumped
    assert secret_sha256(secret) in dumped
    key = store.verify_key(issued.token)
    assert key is not None
    assert key.roles == ("app",)
    assert key.models == ("m",)
    assert key.tenant == "A"
    assert store.verify_key(issued.token[:-2] + "xx") is None
    assert store.verify_key("msk_nothing") is None


def test_unknown_role_and_bad_rate_refused(store: SecurityStore) -> None:
    with pytest.raises(InvalidRequestError, match="root"):
        store.create_key("x", ["root"])
    with pytest.raises(InvalidRequestError):
        store.create_key("x", ["app"], rate_limit=0)


def test_expired_and_revoked_keys_refused(store: SecurityStore) -> None:
    expired = store.create_key("old", ["app"], expires_in=timedelta(seconds=-1))
    assert store.verify_key(expired.token) is None
    assert expired.key.state() == "expired"
    live = store.create_key("live", ["app"])
    assert store.revoke_key(live.key.key_id).state() == "revoked"
    assert store.verify_key(live.token) is None


def test_guard_caches_but_sees_revocation_on_next_request(store: SecurityStore, home: Path) -> None:
    issued = store.create_key("ehr", ["app"])
    counter = ChangeCounter(store)
    guard = SecurityGuard(store, counter, cache_ttl_s=3600)
    try:
        principal = asyncio.run(guard.authenticate({"headers": _headers(issued.token)}))
        assert principal.key_id == issued.key.key_id
        assert principal.roles == frozenset({"app"})
        # A second store (another process in production) revokes: the counter moves.
        other = Registry.open(Settings(home=home))
        try:
            SecurityStore(other.store.engine).revoke_key(issued.key.key_id)  # type: ignore[attr-defined]
        finally:
            other.close()
        with pytest.raises(AuthenticationError):
            asyncio.run(guard.authenticate({"headers": _headers(issued.token)}))
    finally:
        guard.close()


def test_missing_and_malformed_credentials(store: SecurityStore) -> None:
    guard = SecurityGuard(store, ChangeCounter(store))
    try:
        with pytest.raises(AuthenticationError, match="missing credential"):
            guard.authenticate_headers([])
        with pytest.raises(AuthenticationError):
            guard.authenticate_headers(_headers("not-a-key"))
        with pytest.raises(AuthenticationError):
            guard.authenticate_headers([(b"authorization", b"Basic dXNlcjpwYXNz")])
    finally:
        guard.close()


def test_x_api_key_header_and_rate_limit(store: SecurityStore) -> None:
    issued = store.create_key("burst", ["app"], rate_limit=3)
    guard = SecurityGuard(store, ChangeCounter(store))
    try:
        for _ in range(3):
            guard.authenticate_headers([(b"x-api-key", issued.token.encode())])
        with pytest.raises(RateLimitedError) as caught:
            guard.authenticate_headers([(b"x-api-key", issued.token.encode())])
        assert 0 < caught.value.retry_after_s <= 1.0
        assert issued.token not in str(caught.value)
    finally:
        guard.close()


def test_tenant_assignment_reaches_the_guard(store: SecurityStore) -> None:
    issued = store.create_key("a", ["app"], tenant="A")
    guard = SecurityGuard(store, ChangeCounter(store))
    try:
        principal = guard.authenticate_headers(_headers(issued.token))
        with pytest.raises(PermissionDeniedError):
            guard.authorize(principal, "predict", "m")
        store.set_model_tenant("m", "A")
        principal = guard.authenticate_headers(_headers(issued.token))
        guard.authorize(principal, "predict", "m")
        assert guard.visible(principal, "m")
        assert not guard.visible(principal, "n")
    finally:
        guard.close()


def test_the_guard_does_its_io_off_the_event_loop(store: SecurityStore) -> None:
    """A key lookup (cache miss) runs its SQL in a thread; a cached key runs none at all."""
    issued = store.create_key("ehr", ["app"])
    guard = SecurityGuard(store, ChangeCounter(store), cache_ttl_s=3600)
    on_loop: list[str] = []
    statements: list[str] = []

    def record(*args: object) -> None:
        statements.append(str(args[2]))
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        on_loop.append(str(args[2]).split("\n", 1)[0])

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        first = asyncio.run(guard.authenticate({"headers": _headers(issued.token)}))
        looked_up = len(statements)
        second = asyncio.run(guard.authenticate({"headers": _headers(issued.token)}))
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)
        guard.close()
    assert first == second
    assert looked_up > 0  # the miss looked the key up ...
    assert on_loop == []  # ... in a thread
    assert len(statements) == looked_up  # the hit did no I/O

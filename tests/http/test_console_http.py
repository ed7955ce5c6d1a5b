"""The console's security, in process (the browser tests drive the same pages in Chromium):
sessions stored as hashes only, CSRF on every form, the sign-in form's own CSRF and no open
redirect, tenants, every request audited, and the open (demo) mode with its audit page."""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient
from tests.support import wait_for
from tests.unit.serving.inprocess_app import (
    MODEL,
    copy_home,
    create_key,
    make_template,
    registry_at,
    serve,
)

from medserve.core.store.tables_console import console_sessions
from medserve.features.governance.gate import check
from medserve.serving.extensions.security import AUDIT_LOG, AUTH_FAILURES


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template(tmp_path_factory.mktemp("console-template") / "home")


@pytest.fixture
def home(template: Path, tmp_path: Path) -> Path:
    return copy_home(template, tmp_path / "home")


def _csrf(text: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', text)
    assert found, text[:500]
    return found.group(1)


def sign_in(client: TestClient, key: str, next_: str = "/ui/") -> Any:
    form = client.get("/ui/login")
    return client.post(
        "/ui/login",
        data={"key": key, "csrf": _csrf(form.text), "next": next_},
        follow_redirects=False,
    )


def _token(headers: dict[str, str]) -> str:
    return headers["Authorization"].split()[1]


@pytest.fixture
def secured(home: Path) -> Iterator[tuple[TestClient, Any, str]]:
    key = _token(create_key(home, ["admin"]))
    with serve(home, security=True) as (client, resources):
        yield client, resources, key


def test_the_database_holds_a_hash_of_the_session_never_the_key(
    secured: tuple[TestClient, Any, str],
) -> None:
    client, resources, key = secured
    response = sign_in(client, key)
    assert response.status_code == 303
    cookie = response.cookies["medserve_session"]
    engine = resources.registry.store.engine
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(console_sessions)).mappings()]
    assert [r["token_sha256"] for r in rows] == [hashlib.sha256(cookie.encode()).hexdigest()]
    assert all(key not in str(v) and cookie not in str(v) for r in rows for v in r.values())
    header = response.headers["set-cookie"]
    assert "HttpOnly" in header
    assert "SameSite=strict" in header
    assert "Path=/ui" in header


def test_a_form_without_its_csrf_token_changes_nothing(
    secured: tuple[TestClient, Any, str],
) -> None:
    client, resources, key = secured
    sign_in(client, key)
    refused = client.post(
        f"/ui/models/{MODEL}/aliases",
        data={"alias": "staging", "version": "1", "reason": "forged", "csrf": "wrong"},
    )
    assert refused.status_code == 403
    assert "did not come from this console" in refused.text
    assert "staging" not in resources.registry.store.list_aliases(MODEL)
    page = client.get(f"/ui/models/{MODEL}/versions/1/gate")
    moved = client.post(
        f"/ui/models/{MODEL}/aliases",
        data={"alias": "staging", "version": "1", "reason": "ok", "csrf": _csrf(page.text)},
        follow_redirects=False,
    )
    assert moved.status_code == 303
    assert resources.registry.store.list_aliases(MODEL)["staging"] == 1


def test_sign_in_needs_its_form_token_and_never_redirects_away(
    secured: tuple[TestClient, Any, str],
) -> None:
    client, _, key = secured
    forged = client.post("/ui/login", data={"key": key, "csrf": "x"}, follow_redirects=False)
    assert forged.status_code == 403
    assert "medserve_session" not in forged.cookies
    away = sign_in(client, key, next_="//evil.example/ui/")
    assert away.headers["location"] == "/ui/"
    wrong = sign_in(client, "msk_0123456789ab_" + "x" * 40)
    assert wrong.status_code == 401
    assert "unknown, revoked or expired" in wrong.text


def test_every_console_request_is_audited(secured: tuple[TestClient, Any, str]) -> None:
    client, resources, key = secured
    sign_in(client, key)
    assert client.get(f"/ui/models/{MODEL}").status_code == 200
    trail = resources.get(AUDIT_LOG)

    def entries() -> list[dict[str, Any]]:
        trail.flush()
        return list(trail.entries(actor="key:test"))

    wait_for(
        lambda: any(e["detail"] == "console GET /ui/models/{name}" for e in entries()),
        timeout_s=10,
        what="the console read in the audit trail",
    )
    details = {(e["action"], e["detail"], e["model"]) for e in entries()}
    assert ("sign_in", "console POST /ui/login", None) in details
    assert ("read_models", "console GET /ui/models/{name}", MODEL) in details


def test_a_tenant_sees_only_its_models(home: Path) -> None:
    key = _token(create_key(home, ["admin"], tenant="clinic-a"))
    with serve(home, security=True) as (client, _):
        sign_in(client, key)
        listing = client.get("/ui/")
        assert listing.status_code == 200
        assert f">{MODEL}<" not in listing.text
        assert client.get(f"/ui/models/{MODEL}").status_code == 403


def test_open_mode_needs_no_sign_in_and_shows_the_changes(home: Path) -> None:
    with registry_at(home) as registry:
        registry.set_alias(MODEL, "staging", 1, actor="ana", reason="for the trial")
    with serve(home, security=False) as (client, _):
        page = client.get("/ui/")
        assert page.status_code == 200
        assert "Security is off" in page.text
        assert client.get("/ui/login", follow_redirects=False).headers["location"] == "/ui/"
        audit = client.get("/ui/audit")
        assert audit.status_code == 200
        assert "ana" in audit.text  # the alias move, from the outbox into the chain
        verify = client.get("/ui/audit/verify")
        assert "The chain is intact" in verify.text


def test_an_htmx_fragment_without_a_session_sends_the_whole_page_to_sign_in(
    secured: tuple[TestClient, Any, str],
) -> None:
    client, _, _ = secured
    fragment = client.get(
        "/ui/audit", headers={"HX-Request": "true"}, params={"actor": "x"}, follow_redirects=False
    )
    assert fragment.status_code == 204
    assert fragment.headers["hx-redirect"].startswith("/ui/login?next=/ui/audit")
    assert "<table" not in fragment.text


def test_requests_without_a_session_are_counted_not_audited_one_by_one(
    secured: tuple[TestClient, Any, str],
) -> None:
    """As the API's 401s: a crawler or a stale tab leaves one entry per source and minute."""
    client, resources, _ = secured
    failures = resources.get(AUTH_FAILURES)
    before = len(failures)
    for _ in range(5):
        assert client.get("/ui/", follow_redirects=False).status_code == 303
    assert len(failures) == before + 1  # one open group, five requests
    trail = resources.get(AUDIT_LOG)
    trail.flush()
    assert not [e for e in trail.entries(actor="unauthenticated") if e["outcome"] == 401]


def test_a_refused_model_name_is_not_kept_in_the_trail(
    secured: tuple[TestClient, Any, str],
) -> None:
    """A name in a console URL is the caller's text (a patient's, pasted by mistake): a 404 or
    403 keeps ``-`` in the audit, as the API does."""
    client, resources, key = secured
    sign_in(client, key)
    assert client.get("/ui/models/jane-roe-mrn-4455").status_code == 404
    assert client.get("/ui/models/jane-roe-mrn-4455/versions/7/card").status_code == 404
    trail = resources.get(AUDIT_LOG)

    def console_404s() -> list[dict[str, Any]]:
        trail.flush()
        return [e for e in trail.entries(actor="key:test") if e["outcome"] == 404]

    wait_for(lambda: len(console_404s()) == 2, timeout_s=10, what="the refused reads")
    assert "jane" not in str(console_404s()).lower()


def test_signing_in_again_ends_the_previous_session(
    secured: tuple[TestClient, Any, str],
) -> None:
    client, resources, key = secured
    first = sign_in(client, key).cookies["medserve_session"]
    second = sign_in(client, key).cookies["medserve_session"]
    assert first != second  # a new token at every sign-in (no fixation)
    with resources.registry.store.engine.connect() as conn:
        hashes = [r.token_sha256 for r in conn.execute(sa.select(console_sessions))]
    assert hashes == [hashlib.sha256(second.encode()).hexdigest()]


def test_a_revoked_key_ends_its_session_at_the_next_request(
    secured: tuple[TestClient, Any, str], home: Path
) -> None:
    client, resources, _ = secured
    developer = _token(create_key(home, ["developer"]))
    sign_in(client, developer)
    assert client.get(f"/ui/models/{MODEL}").status_code == 200
    store = resources.guard.store
    key_id = next(k.key_id for k in store.list_keys() if "developer" in k.roles)
    store.revoke_key(key_id, actor="test")
    ended = client.get(f"/ui/models/{MODEL}", follow_redirects=False)
    assert ended.status_code == 303
    assert ended.headers["location"] == f"/ui/login?next=/ui/models/{MODEL}&ended=1"
    with resources.registry.store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(console_sessions)).scalar() == 0


def test_the_gate_checklist_gives_the_gates_own_commands(home: Path) -> None:
    """A version without card, criteria or evaluation: every failing item names the command
    the gate itself gives (one source for the CLI, the API and the console), and the criteria
    are not shown as met before there are criteria and an evaluation to meet."""
    with registry_at(home) as registry:
        mv = registry.store.resolve(MODEL, "production")
        problems = check(registry, MODEL, mv.version)
    assert not problems.passed
    with serve(home, security=False) as (client, _):
        page = client.get(f"/ui/models/{MODEL}/versions/{mv.version}/gate")
    assert page.status_code == 200
    text = html.unescape(page.text)
    for fix in problems.fixes:
        assert fix in text
    met = re.search(r"The evaluation meets the acceptance criteria</strong>: ([^<]+)", text)
    assert met is not None
    assert met.group(1).strip() != "done"

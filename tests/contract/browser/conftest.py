"""A real server over a copy of the demo home, keys per role, and Debian's Chromium driven by
Playwright (launched with ``executable_path``: ``playwright install`` is never run).
Screenshots go to ``test-output/console/`` (git-ignored).

Playwright's sync API marks an event loop as running in the main thread for as long as it is
started, which breaks every later ``asyncio.run`` in the session; so the browser lives for this
package's module only (not pytest-playwright's session-wide fixture)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from tests.contract.browser.helpers import IMAGE, MODEL, ROLES, Console, sign_in
from tests.support import create_key, fire_alert_in, start_server, writable_demo_home

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.monitoring import MonitoringStore


def chromium_path() -> str | None:
    """Debian's Chromium (``.ci/run`` installs it with apt-get), or ``$MEDSERVE_CHROMIUM``."""
    return os.environ.get("MEDSERVE_CHROMIUM") or shutil.which("chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        pytest.skip("Chromium is not installed: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        # root in a container has no user namespace for Chromium's sandbox
        launched = playwright.chromium.launch(
            executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            launched.close()


def _monitoring_history(home: Path) -> int:
    """Six hourly monitoring runs of the demo model (the PSI and live-performance time series)
    and a firing alert; returns the alert's id."""
    registry = Registry.open(Settings(home=home))
    try:
        store = MonitoringStore(registry.store)
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        for i in range(6):
            start = end - timedelta(hours=6 - i)
            psi = 0.04 + 0.07 * i
            store.add_run(
                MODEL,
                start,
                start + timedelta(hours=1),
                {
                    "model": MODEL,
                    "window": {
                        "n": 300,
                        "start": start.isoformat(),
                        "end": (start + timedelta(hours=1)).isoformat(),
                    },
                    "drift": {
                        "enough_data": True,
                        "summary": {"psi_max": psi, "status": "alert" if psi > 0.25 else "ok"},
                        "features": {
                            "mean radius": {"psi": psi, "status": "ok", "missing_rate": 0.0},
                            "mean texture": {"psi": psi / 3, "status": "ok", "missing_rate": 0.0},
                        },
                    },
                    "performance": {
                        "overall": {"n": 120, "auroc": 0.97 - 0.01 * i, "observed_expected": 1.0},
                        "matured_window": {"n_labelled": 120, "n_predictions": 300},
                    },
                },
            )
        return fire_alert_in(store, MODEL)
    finally:
        registry.close()


def _unreviewed_version(home: Path) -> int:
    """A second breast-cancer version registered without a card or evaluation: the gate
    blocks it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medserve.core.registry.signature import infer_signature
    from medserve.faces.demo.data import breast_cancer_frame

    X, y = breast_cancer_frame()
    registry = Registry.open(Settings(home=home))
    try:
        version = registry.register(
            MODEL,
            make_pipeline(StandardScaler(), LogisticRegression(C=0.5)).fit(X, y),
            sample=X,
            signature=infer_signature(X, range_margin=0.5),
        )
        return int(version.version)
    finally:
        registry.close()


@pytest.fixture(scope="module")
def console(demo_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    home, _ = writable_demo_home(demo_home, tmp_path_factory.mktemp("console") / "home")
    alert = _monitoring_history(home)
    v2 = _unreviewed_version(home)
    registry = Registry.open(Settings(home=home))
    try:  # the demo's chat model (smollm2-chat), where the llm extra and its package are
        from medserve.faces.demo.llm import register_llm_demos
        from medserve.faces.demo.modalities import image_bundle_path
        from medserve.features.modalities.register import register_image_bundle

        register_llm_demos(registry, home)
        register_image_bundle(registry, IMAGE, image_bundle_path(), alias="production")
    finally:
        registry.close()
    keys = {role: create_key(home, [role], name=f"{role}-browser") for role in ROLES}
    server = start_server(home)
    try:
        yield Console(server, keys, alert, v2)
    finally:
        server.stop()


@pytest.fixture
def signed_in(browser: Browser, console: Console) -> Iterator[Any]:
    """``signed_in(role)``: a page in a fresh browser context, signed in with ``role``'s key;
    every Content-Security-Policy violation the page reports fails the test."""
    contexts: list[BrowserContext] = []
    violations: list[str] = []

    def open_as(role: str, key: str | None = None, *, axe: bool = False) -> Page:
        # axe-core is injected as a script of the test's own: only its context bypasses the CSP
        context = browser.new_context(base_url=console.url, bypass_csp=axe)
        contexts.append(context)
        page = context.new_page()
        page.on(
            "console",
            lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
        )
        sign_in(page, key or console.keys[role])
        return page

    yield open_as
    for context in contexts:
        context.close()
    assert violations == [], "the console broke its own Content-Security-Policy"

"""Shared fixtures: an isolated medserve home, the demo models, and a real server on loopback;
and the one hook that makes CI unable to pass by skipping."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from tests.cluster_fixtures import (  # noqa: F401 (fixtures)
    migrated_postgres_uri,
    ray_cluster,
    s3_endpoint,
    s3_uri,
)
from tests.support import ServerProcess, start_server

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings

# A skip whose reason starts with this is a case that does not apply (a SQLite-only check on the
# PostgreSQL leg): allowed in CI. Every other skip means something CI must have is missing.
NOT_APPLICABLE = "not applicable: "


def _fail_skip_under_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """A skip that is not "not applicable:" becomes a failure under CI (``CI`` set to anything
    but empty, 0, false or no)."""
    in_ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    if not in_ci or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
    if reason.removeprefix("Skipped: ").startswith(NOT_APPLICABLE):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under CI, which must run it: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    """Under ``CI=true`` a test that skips because a service or package is absent (PostgreSQL,
    llama-cpp-python, a mountable tmpfs, ...) fails instead: CI can never pass by skipping."""
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None]:
    """The same for a whole module skipped while it is collected (a module-level
    ``pytest.importorskip``), which the hook above never sees."""
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())  # type: ignore[attr-defined]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh medserve home, selected through the environment as users do."""
    path = tmp_path / "home"
    monkeypatch.setenv("MEDSERVE_HOME", str(path))
    monkeypatch.delenv("MEDSERVE_STORE_URI", raising=False)
    return path


@pytest.fixture
def registry(home: Path) -> Iterator[Registry]:
    reg = Registry.open(Settings(home=home))
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with the demo models registered once for the whole session (read-only use)."""
    from medserve.faces.demo import register_demo_models

    path = tmp_path_factory.mktemp("demo-home")
    reg = Registry.open(Settings(home=path))
    try:
        register_demo_models(reg)
    finally:
        reg.close()
    return path


@pytest.fixture(scope="session")
def demo_server(demo_home: Path) -> Iterator[ServerProcess]:
    """One server over the demo home for read-only protocol tests."""
    server = start_server(demo_home, workers=1, env={"MEDSERVE_MAX_BODY_BYTES": "1000000"})
    yield server
    server.stop()

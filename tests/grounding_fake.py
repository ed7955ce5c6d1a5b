"""Scripted runtimes for grounded answers, installed as a plugin (like ``tests/llm_fake.py``):

- ``keyword-embed``: an embedding whose similarity means something: one dimension per word of a
  small clinical vocabulary (counts, unit length), so a question about metformin retrieves the
  metformin resource;
- ``scripted-chat``: answers the text scripted in its artifact (so a test chooses which labels it
  cites, grammar or not) and records what it received (``RECEIVED``) and its parameters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medserve.core.errors import InvalidRequestError
from medserve.core.extensions import Extension, FlavorLoader, FlavorOptions
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry
from medserve.core.registry.signature import FeatureSpec, OutputSpec, Signature
from medserve.core.runtimes.base import Runtime, RuntimeMetadata
from medserve.features.llm.protocol import Chunk, GenerationParams, GenerativeInfo

EMBED_FLAVOR = "keyword-embed"
CHAT_FLAVOR = "scripted-chat"
VOCABULARY = ("metformin", "diabetes", "glucose", "hba1c", "penicillin", "allergy", "rash",
              "blood", "pressure", "lisinopril", "hypertension", "asthma", "salbutamol",
              "medication", "dose")  # fmt: skip
RECEIVED: list[list[dict[str, str]]] = []
PARAMS: list[GenerationParams] = []


class KeywordEmbedder:
    def predict(self, X: Any) -> dict[str, np.ndarray]:
        raise InvalidRequestError("embeddings only")

    def metadata(self) -> RuntimeMetadata:
        return RuntimeMetadata(runtime="keyword-embed", task="embedding", n_features=1)

    def dimensions(self) -> int:
        return len(VOCABULARY) + 1

    def count_tokens(self, text: str) -> int:
        return max(1, len(text.split()))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            words = re.findall(r"[a-z0-9]+", text.lower())
            row = [float(words.count(w)) for w in VOCABULARY] + [0.01]
            vector = np.asarray(row)
            rows.append(vector / np.linalg.norm(vector))
        return np.asarray(rows, dtype=np.float32)


class ScriptedChat:
    def __init__(self, config: dict[str, Any]) -> None:
        self.reply = str(config["reply"])

    def predict(self, X: Any) -> dict[str, np.ndarray]:
        raise InvalidRequestError("chat only")

    def metadata(self) -> RuntimeMetadata:
        return RuntimeMetadata(runtime="scripted-chat", task="generation", n_features=1)

    def info(self) -> GenerativeInfo:
        return GenerativeInfo(architecture="scripted", context_length=8192)

    def count_tokens(self, text: str) -> int:
        return max(1, len(text.split()))

    def chat(self, messages: Sequence[dict[str, str]], params: GenerationParams) -> Iterator[Chunk]:
        RECEIVED.append([dict(m) for m in messages])
        PARAMS.append(params)
        yield Chunk(self.reply, "stop", 10, 5)

    def complete(self, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
        raise InvalidRequestError("chat only")


def _embed(path: Path, options: FlavorOptions) -> Runtime:
    return KeywordEmbedder()


def _chat(path: Path, options: FlavorOptions) -> Runtime:
    return ScriptedChat(json.loads(path.read_text()))


class GroundingFakes(Extension):
    name = "grounding-fakes"

    def runtime_flavors(self) -> dict[str, FlavorLoader]:
        return {EMBED_FLAVOR: _embed, CHAT_FLAVOR: _chat}


extension = GroundingFakes()


def install_plugin(site: Path) -> Path:
    info = site / "medserve_grounding_fakes-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: medserve-grounding-fakes\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(
        "[medserve.extensions]\ngrounding-fakes = tests.grounding_fake:extension\n"
    )
    return site


def register(registry: Registry, name: str, *, reply: str | None = None) -> ModelVersion:
    """A scripted chat model (``reply``) or, without one, the keyword embedder; production."""
    flavor = EMBED_FLAVOR if reply is None else CHAT_FLAVOR
    sha = registry.artifacts.put_bytes(json.dumps({"reply": reply}).encode())
    signature = Signature(
        inputs=[FeatureSpec(name="messages", type="string")],
        outputs=[OutputSpec(name="text", datatype="BYTES", shape=[-1])],
    )
    return registry.add_version(
        name,
        alias="production",
        actor="test",
        description="",
        artifact_sha256=sha,
        artifact_filename="scripted.json",
        flavor=flavor,
        runtime=flavor,
        runtime_reason="test",
        source_flavor=flavor,
        source_artifact_sha256=None,
        library_versions={},
        signature=signature.model_dump(mode="json"),
        tags={},
        serving_config={},
    )

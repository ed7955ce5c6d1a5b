"""A recording fake language model, served by the real pipeline through a test flavor.

``RecordingRuntime`` implements ``GenerativeRuntime``: it records exactly the texts it received
(``RECEIVED``, in this process) and the parameters (``PARAMS``), and answers deterministic
chunks read from its artifact (a JSON file), one token per chunk, stopping at ``max_tokens``
(``finish_reason: "length"``). A prompt that asks for it changes the answer:

- ``whoami``: answers the worker's process id (which worker served a call);
- ``echo``: answers what it received (to see redaction from the outside);
- ``slow``: answers many chunks, each after a short pause (a caller can go away mid-stream).

``FakeEmbedder`` implements ``EmbeddingRuntime`` (4 dimensions, deterministic).

``install_plugin(site)`` writes the package's entry point into ``site``: put ``site`` on
``sys.path`` (in-process tests) or ``PYTHONPATH`` (a real server), and ``register_fake``
registers a model of the test flavor in a home.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
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

FLAVOR = "recording-fake"
EMBED_FLAVOR = "recording-fake-embed"
RECEIVED: list[str] = []
PARAMS: list[GenerationParams] = []
_PAUSE = threading.Event()  # never set: waits pace the "slow" answer


class RecordingRuntime:
    def __init__(self, config: dict[str, Any]) -> None:
        # stored base64-encoded, so that the model's own artifact never holds the answer's text
        # (the no-text-on-disk test looks for it everywhere under the home)
        self.reply = [base64.b64decode(p).decode() for p in config["reply_b64"]]
        self.context_length = int(config.get("context_length", 4096))

    def predict(self, X: Any) -> dict[str, np.ndarray]:
        raise InvalidRequestError("a language model answers through /openai/v1")

    def metadata(self) -> RuntimeMetadata:
        return RuntimeMetadata(runtime="recording-fake", task="generation", n_features=1)

    def info(self) -> GenerativeInfo:
        return GenerativeInfo(architecture="fake", context_length=self.context_length)

    def count_tokens(self, text: str) -> int:
        return max(1, len(text.split()))

    def _answer(self, received: str, params: GenerationParams) -> Iterator[Chunk]:
        RECEIVED.append(received)
        PARAMS.append(params)
        prompt_tokens = self.count_tokens(received)
        if "whoami" in received:
            pieces = [f"pid {os.getpid()}"]
        elif "echo" in received:
            pieces = [received[i : i + 3] for i in range(0, len(received), 3)]
        elif "slow" in received:
            pieces = ["tick "] * 2000
        else:
            pieces = self.reply
        for n, piece in enumerate(pieces, start=1):
            if "slow" in received:
                _PAUSE.wait(0.005)  # a model's pace: the caller may go away meanwhile
            last = n == len(pieces)
            finish = "length" if n >= params.max_tokens and not last else None
            if last:
                finish = "stop"
            yield Chunk(piece, finish, prompt_tokens, n)
            if finish == "length":
                return

    def chat(self, messages: Sequence[dict[str, str]], params: GenerationParams) -> Iterator[Chunk]:
        return self._answer("\n".join(m["content"] for m in messages), params)

    def complete(self, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
        return self._answer(prompt, params)


class FakeEmbedder:
    def predict(self, X: Any) -> dict[str, np.ndarray]:
        raise InvalidRequestError("an embedding model answers through /openai/v1/embeddings")

    def metadata(self) -> RuntimeMetadata:
        return RuntimeMetadata(runtime="recording-fake", task="embedding", n_features=1)

    def dimensions(self) -> int:
        return 4

    def count_tokens(self, text: str) -> int:
        return max(1, len(text.split()))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        RECEIVED.extend(texts)
        rows = []
        for text in texts:
            digest = hashlib.sha256(text.encode()).digest()
            rows.append([b / 255.0 for b in digest[:4]])
        return np.asarray(rows, dtype=np.float32)


def _generative(path: Path, options: FlavorOptions) -> Runtime:
    return RecordingRuntime(json.loads(path.read_text()))


def _embedding(path: Path, options: FlavorOptions) -> Runtime:
    return FakeEmbedder()


class FakeLlmExtension(Extension):
    name = "fake-llm"

    def runtime_flavors(self) -> dict[str, FlavorLoader]:
        return {FLAVOR: _generative, EMBED_FLAVOR: _embedding}


extension = FakeLlmExtension()


def install_plugin(site: Path) -> Path:
    """The test flavors' entry point in ``site`` (a directory for sys.path / PYTHONPATH)."""
    info = site / "medserve_fake_llm-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medserve-fake-llm\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[medserve.extensions]\nfake-llm = tests.llm_fake:extension\n"
    )
    return site


def register_fake(
    registry: Registry,
    name: str,
    *,
    reply: list[str] | None = None,
    serving_config: dict[str, Any] | None = None,
    embedding: bool = False,
    alias: str | None = "production",
    context_length: int = 4096,
) -> ModelVersion:
    """A model of the test flavor, registered in ``registry`` (aliased ``production``)."""
    pieces = reply or ["Hello", " there", "."]
    config = {
        "reply_b64": [base64.b64encode(p.encode()).decode() for p in pieces],
        "context_length": context_length,
    }
    sha = registry.artifacts.put_bytes(json.dumps(config).encode())
    signature = Signature(
        inputs=[FeatureSpec(name="messages", type="string")],
        outputs=[OutputSpec(name="text", datatype="BYTES", shape=[-1])],
    )
    flavor = EMBED_FLAVOR if embedding else FLAVOR
    return registry.add_version(
        name,
        alias=alias,
        actor="test",
        description="",
        artifact_sha256=sha,
        artifact_filename="fake.json",
        flavor=flavor,
        runtime="recording-fake",
        runtime_reason="test",
        source_flavor=flavor,
        source_artifact_sha256=None,
        library_versions={},
        signature=signature.model_dump(mode="json"),
        tags={},
        serving_config=serving_config or {},
    )

"""The ``minilm-onnx`` flavor: MiniLM sentence embeddings from the packaged weights, no torch."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from medserve.core.errors import InvalidRequestError, UnsupportedFormatError
from medserve.core.runtimes.base import Runtime
from medserve.core.runtimes.loader import load_runtime
from medserve.features.llm.embedding_runtime import MiniLmEmbeddingRuntime
from medserve.features.llm.protocol import EmbeddingRuntime


@pytest.fixture(scope="module")
def runtime(minilm_bundle: Path) -> MiniLmEmbeddingRuntime:
    loaded = load_runtime("minilm-onnx", minilm_bundle)
    assert isinstance(loaded, MiniLmEmbeddingRuntime)
    return loaded


def test_it_is_a_runtime_and_an_embedding_runtime(runtime: MiniLmEmbeddingRuntime) -> None:
    assert isinstance(runtime, Runtime)
    assert isinstance(runtime, EmbeddingRuntime)
    assert runtime.metadata().task == "embedding"
    assert runtime.dimensions() == 384
    with pytest.raises(InvalidRequestError, match="/openai/v1/embeddings"):
        runtime.predict(np.array([["chest pain"]], dtype=object))


def test_vectors_are_unit_length_and_similar_sentences_are_closer(
    runtime: MiniLmEmbeddingRuntime,
) -> None:
    texts = [
        "The patient has crushing chest pain.",
        "Severe pain in the chest.",
        "Requests a repeat hay fever prescription.",
    ]
    e = runtime.embed(texts)
    assert e.shape == (3, 384)
    assert e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    similar, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert similar > unrelated + 0.2, (similar, unrelated)


def test_a_batch_gives_each_text_its_own_vector_in_order(
    runtime: MiniLmEmbeddingRuntime,
) -> None:
    # lengths differ, so the runtime sorts them into batches and must put them back
    texts = ["fever", "a much longer note about shortness of breath on exertion", "cough"] * 12
    batch = runtime.embed(texts)
    for i in (0, 1, 2, 35):
        np.testing.assert_allclose(batch[i], runtime.embed([texts[i]])[0], atol=1e-5)
    assert runtime.embed([]).shape == (0, 384)


def test_the_graph_matches_an_independent_numpy_forward_pass(
    runtime: MiniLmEmbeddingRuntime,
) -> None:
    from tokenizers import Tokenizer

    from medserve.features.modalities.text_encoder import minilm_dir, reference_embeddings

    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tokenizer.no_padding()  # the packaged tokenizer.json pads to a fixed length
    enc = tokenizer.encode("Shortness of breath on exertion.")
    ids = np.array([enc.ids], np.int64)
    reference = reference_embeddings(ids, np.ones_like(ids))
    np.testing.assert_allclose(
        runtime.embed(["Shortness of breath on exertion."]), reference, atol=1e-4
    )


def test_count_tokens_counts_word_pieces_before_truncation(
    runtime: MiniLmEmbeddingRuntime,
) -> None:
    assert runtime.count_tokens("chest pain") == 4  # [CLS] chest pain [SEP]
    assert runtime.count_tokens("pain " * 400) > 256  # what was sent, not what was kept


def test_a_bundle_of_another_flavor_is_refused(tmp_path: Path, minilm_bundle: Path) -> None:
    other = tmp_path / "text.zip"
    with zipfile.ZipFile(minilm_bundle) as src, zipfile.ZipFile(other, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "medserve-bundle.json":
                data = data.replace(b'"minilm-onnx"', b'"text"')
            dst.writestr(name, data)
    with pytest.raises(UnsupportedFormatError, match="not 'minilm-onnx'"):
        MiniLmEmbeddingRuntime.from_path(other)

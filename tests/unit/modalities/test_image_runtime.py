"""The committed demo CNN bundle served through the image runtime (no torch involved)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image
from tests.unit.modalities.helpers import dicom_file

from medserve.core.runtimes.loader import load_runtime
from medserve.faces.demo.modalities import image_bundle_path
from medserve.features.modalities.image_demo_data import add_lesion
from medserve.features.modalities.image_io import DecodedImage, read_dicom, read_png
from medserve.features.modalities.image_runtime import ImageRuntime


def _runtime() -> ImageRuntime:
    runtime = load_runtime("image", image_bundle_path())
    assert isinstance(runtime, ImageRuntime)
    return runtime


def test_committed_bundle_is_small_and_declares_its_preprocessing() -> None:
    assert image_bundle_path().stat().st_size < 1_000_000
    runtime = _runtime()
    assert runtime.spec.window is not None
    assert (runtime.spec.window.center, runtime.spec.window.width) == (40, 400)
    assert runtime.metadata().class_labels == ["no_lesion", "lesion"]


def test_synthetic_lesion_raises_the_lesion_probability_and_the_saliency_finds_it() -> None:
    runtime = _runtime()
    clean = read_dicom(dicom_file("CT_small.dcm").read_bytes())
    # a lesion in the soft tissue of the 128x128 slice, centred at row 80, column 40
    lesion = DecodedImage(
        add_lesion(clean.pixels, "CT", (80.0, 40.0), 9.0, 1.0), "CT", "dicom", display=False
    )
    out = runtime.predict(np.array([[clean], [lesion]], dtype=object))
    probabilities = out["probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert probabilities[1, 1] > probabilities[0, 1] + 0.2
    assert out["label"][1] == "lesion"
    explanation = runtime.explain_image(lesion)
    grid = np.array(explanation["grid"])
    assert grid.shape == (8, 8)  # 64x64 input, 8-pixel patches
    peak = np.unravel_index(grid.argmax(), grid.shape)
    # the lesion (rows 80±9, cols 40±9 of 128) is in patch rows 4-5, columns 2-3 of 64/8
    assert 3 <= peak[0] <= 6
    assert 1 <= peak[1] <= 4
    png = Image.open(io.BytesIO(base64.b64decode(explanation["saliency_png"])))
    assert png.format == "PNG"
    assert png.size == (64, 64)


def test_png_input_is_scaled_as_display_values() -> None:
    runtime = _runtime()
    pixels = (np.linspace(0, 255, 64 * 64).reshape(64, 64)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    image = read_png(buffer.getvalue())
    tensor, unit, mode = runtime.prepare(image)
    assert mode == "display"
    assert unit.max() <= 1.0
    assert tensor.shape == (1, 64, 64)
    out = runtime.predict(np.array([[image]], dtype=object))
    assert out["probabilities"].shape == (1, 2)

"""The modalities extension (see ``medserve.serving.extension``): runtime flavors for image,
text and sequence bundles, and the codecs of ``medserve.serving.extensions.modalities_http`` on
the records predict endpoint: ``application/dicom`` and ``image/png`` for image models,
``text/plain`` for clinical notes and DNA sequences (FASTA). Nothing is imported from pydicom,
Pillow or tokenizers until a request of that kind arrives, so servers without the extras start
as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from medserve.core.extensions import FlavorLoader, FlavorOptions
from medserve.core.phi import load_or_create_salt
from medserve.core.runtimes.base import Runtime
from medserve.core.settings import Settings
from medserve.serving.extension import ServingExtension
from medserve.serving.extensions.modalities_http import media_handlers
from medserve.serving.media import MediaHandler


class ModalitiesExtension(ServingExtension):
    """Image (DICOM, PNG), clinical-text and DNA-sequence models: their runtime flavors and the
    media types the records API accepts for them."""

    name = "modalities"
    order = 50

    def media_handlers(self, settings: Settings) -> Mapping[tuple[str, bytes], MediaHandler]:
        # the home's PHI salt: de-identified DICOM UIDs are stable across workers and restarts
        return media_handlers(load_or_create_salt(settings.home))

    def runtime_flavors(self) -> Mapping[str, FlavorLoader]:
        return {"image": _image, "text": _text, "sequence": _sequence}


def _image(path: Path, options: FlavorOptions) -> Runtime:
    """Bundle: ONNX + declared preprocessing ([imaging] extra)."""
    # lazy import (optional extras: imaging, text)
    from medserve.features.modalities.image_runtime import ImageRuntime  # noqa: PLC0415

    return ImageRuntime.from_path(path, intra_op_threads=options.intra_op_threads)


def _text(path: Path, options: FlavorOptions) -> Runtime:
    """Bundle: tokenizer + ONNX encoder + head ([text] extra)."""
    # lazy import (optional extras: imaging, text)
    from medserve.features.modalities.text_runtime import TextRuntime  # noqa: PLC0415

    return TextRuntime.from_path(path, intra_op_threads=options.intra_op_threads)


def _sequence(path: Path, options: FlavorOptions) -> Runtime:
    """Bundle: k-mer featuriser + inner ONNX/skops model."""
    # lazy import (optional extras: imaging, text)
    from medserve.features.modalities.sequence import SequenceRuntime  # noqa: PLC0415

    return SequenceRuntime.from_path(path, intra_op_threads=options.intra_op_threads)


extension = ModalitiesExtension()

"""Decoding request bodies into pixels: DICOM (checked and de-identified first) and PNG.

A DICOM body is parsed, de-identified (PS3.15 Annex E basic profile) *before* anything else
touches it, then checked: it must be an image object (SOP class and pixel data), of a modality the
model accepts, one frame; every refusal names the DICOM attribute and the rule, never a value
from the header. Pixels go through the modality LUT, so CT arrives in Hounsfield units.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medserve.core.errors import UnsupportedMediaTypeError, ValidationFailedError
from medserve.features.modalities.dicom_deid import deidentify_dataset
from medserve.features.modalities.held_warnings import held_warnings

# process-local fallback; servers pass the home's PHI salt
_PROCESS_SALT = os.urandom(32)

# Non-image SOP classes are recognised by the absence of pixel data; these names make the
# refusal say what the object is.
_SUMMARY_KEYS = (
    "Modality",
    "BodyPartExamined",
    "Rows",
    "Columns",
    "PhotometricInterpretation",
    "BitsStored",
    "Manufacturer",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
)


@dataclass
class DecodedImage:
    """Pixels ready for preprocessing, and a header summary that holds no PHI."""

    pixels: np.ndarray
    modality: str | None
    source: str  # "dicom" | "png"
    display: bool  # True when pixels are display values (PNG), not calibrated
    header: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """What the prediction log keeps for an image: never pixels, never header PHI."""
        rows, cols = self.pixels.shape[:2]
        return f"{self.source}:{self.modality or 'unknown'}:{rows}x{cols}"

    def __repr__(self) -> str:
        return f"DecodedImage({self.describe()})"

    __str__ = describe


def _refuse(field_name: str, rule: str, message: str) -> ValidationFailedError:
    return ValidationFailedError(
        message, details=[{"field": field_name, "rule": rule, "message": message}]
    )


def read_dicom(
    raw: bytes, *, modalities: list[str] | None = None, salt: bytes | None = None
) -> DecodedImage:
    """Parse, de-identify, check and decode a DICOM body; what pydicom warns or logs on the
    way (values quoted) is held (``held_warnings``), never printed."""
    with held_warnings("DICOM"):
        return _read_dicom(raw, modalities=modalities, salt=salt)


def _read_dicom(
    raw: bytes, *, modalities: list[str] | None = None, salt: bytes | None = None
) -> DecodedImage:
    import pydicom  # noqa: PLC0415 (optional extra: pydicom)
    from pydicom.errors import InvalidDicomError  # noqa: PLC0415 (optional extra: pydicom)

    # lazy import (optional extra: pydicom)
    from pydicom.pixels.processing import apply_modality_lut  # noqa: PLC0415
    from pydicom.uid import RLELossless  # noqa: PLC0415 (optional extra: pydicom)

    # pydicom warns and logs a value that breaks its VR's rules, value included (a UID that
    # holds a name, an over-long id): read without value validation, so nothing of the header
    # is printed before de-identification (process-wide; medserve reads DICOM only here).
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=False)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        if raw[128:132] == b"DICM":  # a DICOM file, damaged: not a question of media type
            raise _refuse(
                "body", "corrupt", "the DICOM file is truncated or corrupt: it cannot be parsed"
            ) from exc
        raise UnsupportedMediaTypeError(
            "the body is not a readable DICOM Part 10 file (a 128-byte preamble then 'DICM')"
        ) from exc
    deidentify_dataset(ds, salt=salt or _PROCESS_SALT)
    sop_class = ds.get("SOPClassUID")
    sop_name = getattr(sop_class, "name", None) or "unknown SOP class"
    if sop_class is None:
        raise _refuse(
            "SOPClassUID",
            "required",
            "the DICOM object has no SOP Class UID: it is incomplete (truncated or corrupt?)",
        )
    if "PixelData" not in ds:
        raise _refuse(
            "PixelData",
            "required",
            f"the DICOM object is a {sop_name} with no pixel data; this model needs an image",
        )
    modality = str(ds.get("Modality", "")) or None
    if modalities is not None and modality not in modalities:
        raise _refuse(
            "Modality",
            "allowed_values",
            f"this model accepts modality {', '.join(modalities)}; the image is "
            f"{modality or 'without a modality'}",
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise _refuse("NumberOfFrames", "maximum", f"send one frame; the object has {frames}")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    readable = syntax is None or not syntax.is_compressed or syntax == RLELossless
    try:
        array = ds.pixel_array
    except Exception as exc:  # missing decoder plugins raise a variety of errors
        if readable:  # a syntax medserve decodes: the data itself is short or damaged
            raise _refuse(
                "PixelData",
                "corrupt",
                "the pixel data is truncated or corrupt (shorter than its rows, columns and "
                "bits allocated say, or not decodable)",
            ) from exc
        name = getattr(syntax, "name", "an unknown transfer syntax")
        raise UnsupportedMediaTypeError(
            f"cannot decode pixel data encoded as {name}; send uncompressed or RLE DICOM"
        ) from exc
    if array.ndim == 3:  # colour: luminance, as a grayscale model sees it
        array = array[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        values = array
    else:
        values = np.asarray(apply_modality_lut(array, ds), dtype=np.float32)
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            values = values.max() - values  # inverted grayscale: bright means low
    header = {key: _plain(ds.get(key)) for key in _SUMMARY_KEYS if key in ds}
    header["SOPClassUID"] = str(sop_class)
    header["SOPClassName"] = sop_name
    return DecodedImage(values, modality, "dicom", display=False, header=header)


def read_png(raw: bytes) -> DecodedImage:
    """Decode a PNG body (Pillow's warnings, e.g. on text chunks, held like pydicom's)."""
    with held_warnings("PNG"):
        return _read_png(raw)


def _read_png(raw: bytes) -> DecodedImage:
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 (optional extra: PIL)

    try:
        image = Image.open(io.BytesIO(raw))
        if image.format != "PNG":
            raise UnsupportedMediaTypeError("the body is not a PNG image")
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise UnsupportedMediaTypeError("the body is not a readable PNG image") from exc
    if image.mode in {"I;16", "I;16B", "I"}:
        pixels = np.asarray(image, dtype=np.uint16)
    else:
        pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    return DecodedImage(pixels, None, "png", display=True, header={"format": "PNG"})


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str):
        return value
    try:
        return float(value) if hasattr(value, "real") else str(value)
    except (TypeError, ValueError):
        return str(value)

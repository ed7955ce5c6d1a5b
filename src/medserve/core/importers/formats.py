"""Which format an artifact is in, decided by its content, and whether it is safe to load.

Extensions lie (a ``model.onnx`` can be a pickle), so content decides. The one exception leans
towards safety: a ``.pkl``/``.pickle``/``.joblib`` name is treated as pickle whatever it holds.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Final

from medserve.core.errors import UnsafeArtifactError, UnsupportedFormatError

FORMATS: Final = (
    "onnx",
    "skops",
    "xgboost-json",
    "xgboost-ubj",
    "lightgbm-text",
    "mlflow",
    "pickle",
)
SAFE_FORMATS: Final = frozenset(
    {"onnx", "skops", "xgboost-json", "xgboost-ubj", "lightgbm-text", "mlflow"}
)
_PICKLE_SUFFIXES: Final = frozenset({".pkl", ".pickle", ".joblib"})
# joblib's compressed containers (zlib is recognised by its header checksum below)
_JOBLIB_MAGICS: Final = (
    b"ZF",
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ",
    b"\x5d\x00\x00",
    b"\x04\x22\x4d\x18",
)


def detect_format(path: Path) -> str:
    """Return one of ``FORMATS`` or raise ``UnsupportedFormatError``."""
    path = Path(path)
    if path.is_dir():
        if (path / "MLmodel").is_file():
            return "mlflow"
        raise UnsupportedFormatError(
            f"directory {path.name!r} is not an MLflow model (no MLmodel file)"
        )
    if not path.is_file():
        raise UnsupportedFormatError(f"no such file: {path.name!r}")
    with path.open("rb") as fh:
        head = fh.read(256)
    if path.suffix.lower() in _PICKLE_SUFFIXES or _looks_like_pickle(head):
        return "pickle"
    if head.startswith(b"PK\x03\x04"):
        if _is_skops(path):
            return "skops"
        raise UnsupportedFormatError(f"{path.name!r} is a zip archive but not a skops file")
    if head.startswith(b"{"):
        fmt = _xgboost_kind(path, head)
        if fmt:
            return fmt
    if head.startswith(b"tree\n") or head.startswith(b"version="):
        return "lightgbm-text"
    if _is_onnx(path):
        return "onnx"
    raise UnsupportedFormatError(
        f"cannot recognise the format of {path.name!r}; supported: ONNX, skops, XGBoost JSON/UBJ, "
        "LightGBM text, an MLflow model directory (and pickle/joblib with --trust-pickle)"
    )


def ensure_safe(fmt: str, *, trust_pickle: bool) -> None:
    """Refuse formats that run code on load unless an admin explicitly trusts the artifact."""
    if fmt == "pickle" and not trust_pickle:
        raise UnsafeArtifactError(
            "pickle/joblib artifacts can execute arbitrary code when loaded and are refused. "
            "Save the model as skops (skops.io.dump), ONNX, XGBoost JSON/UBJ or LightGBM text "
            "instead, or, if you fully trust where this file came from, pass --trust-pickle."
        )
    if fmt not in FORMATS:
        raise UnsupportedFormatError(f"unknown artifact format {fmt!r}")


def _looks_like_pickle(head: bytes) -> bool:
    # protocol 2+ starts with PROTO (0x80) and the protocol number
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return True  # zlib stream (joblib's default compressor)
    return head.startswith(_JOBLIB_MAGICS)


def _is_skops(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return "schema.json" in zf.namelist()
    except zipfile.BadZipFile:
        return False


def _xgboost_kind(path: Path, head: bytes) -> str | None:
    # UBJSON objects also open with "{", then typed keys: look for the learner key nearby
    if b"learner" in head and (b'"learner"' not in head):
        return "xgboost-ubj"
    try:
        doc = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(doc, dict) and "learner" in doc:
        return "xgboost-json"
    return None


def _is_onnx(path: Path) -> bool:
    import onnx  # noqa: PLC0415 (heavy: onnx, kept off the serving path)

    # lazy import (heavy: protobuf, kept off the serving path)
    from google.protobuf.message import DecodeError  # noqa: PLC0415

    try:
        # parse as binary protobuf whatever the file is called (onnx.load guesses by extension)
        model = onnx.ModelProto.FromString(path.read_bytes())
    except (DecodeError, ValueError, RuntimeError):
        return False
    # protobuf parses many byte strings "successfully"; a real model has a graph and an IR version
    return model.ir_version > 0 and model.HasField("graph") and len(model.graph.node) > 0

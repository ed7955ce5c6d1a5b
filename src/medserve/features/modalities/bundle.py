"""A model bundle: one zip artifact holding a manifest and the files a runtime needs.

The registry stores one content-addressed artifact per version; a bundle lets an image, text or
sequence model keep its ONNX graph *and* its declared preprocessing (window, resize, tokenizer,
k) under that one sha256, so they can never drift apart. Only safe member formats are written
(ONNX, JSON, skops), members are read by name from the manifest and sizes are bounded, so a
crafted zip cannot make the loader read outside the archive or exhaust memory.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from medserve.core.errors import ModelLoadError, UnsupportedFormatError

MANIFEST: Final = "medserve-bundle.json"
BUNDLE_FORMAT: Final = "medserve-bundle/1"
_MAX_MEMBER_BYTES: Final = 1 << 30  # 1 GiB: a transformer encoder is ~90 MB


@dataclass(frozen=True)
class Bundle:
    flavor: str
    spec: dict[str, Any]
    members: dict[str, bytes]

    def member(self, name: str) -> bytes:
        try:
            return self.members[name]
        except KeyError:
            raise ModelLoadError(f"the {self.flavor} bundle has no {name!r} member") from None

    def json_member(self, name: str) -> Any:
        return json.loads(self.member(name))


def write_bundle(
    flavor: str, spec: dict[str, Any], members: dict[str, bytes], path: Path | None = None
) -> bytes:
    """Build the bundle's bytes (deterministic: fixed timestamps, sorted members)."""
    buffer = io.BytesIO()
    manifest = {"format": BUNDLE_FORMAT, "flavor": flavor, "spec": spec, "members": sorted(members)}
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        entries = [(MANIFEST, json.dumps(manifest, sort_keys=True, indent=1).encode())]
        entries += sorted(members.items())
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            zf.writestr(info, data)
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def is_bundle(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return MANIFEST in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def read_bundle(path: Path, flavor: str) -> Bundle:
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST))
            if manifest.get("format") != BUNDLE_FORMAT:
                raise UnsupportedFormatError(f"not a {BUNDLE_FORMAT} bundle")
            if manifest.get("flavor") != flavor:
                raise UnsupportedFormatError(
                    f"the bundle holds a {manifest.get('flavor')!r} model, not {flavor!r}"
                )
            members: dict[str, bytes] = {}
            for name in manifest.get("members", []):
                info = zf.getinfo(str(name))
                if info.file_size > _MAX_MEMBER_BYTES:
                    raise UnsupportedFormatError(f"bundle member {name!r} is too large")
                members[str(name)] = zf.read(info)
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise UnsupportedFormatError(f"unreadable {flavor} bundle: {exc}") from exc
    return Bundle(flavor=flavor, spec=dict(manifest.get("spec", {})), members=members)

"""Content-addressed artifact store: a model's bytes are named by their sha256.

Naming by content makes registration idempotent (the same bytes are stored once) and makes
tampering detectable: ``path`` re-hashes the file on every verified call, so an artifact that was
edited on disk after registration is refused at load instead of silently served.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from medserve.core.errors import ArtifactIntegrityError, InvalidRequestError, NotFoundError

_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    """Local store laid out as ``root/ab/abcdef...``; stored files are read-only."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- writing ---------------------------------------------------------------------------
    def put_bytes(self, data: bytes) -> str:
        return self._ingest([data])

    def put_file(self, path: Path) -> str:
        path = Path(path)
        if not path.is_file():
            raise InvalidRequestError(f"not a regular file: {path.name}")
        with path.open("rb") as fh:
            return self._ingest(iter(lambda: fh.read(_CHUNK), b""))

    def _ingest(self, chunks: Iterable[bytes]) -> str:
        """Hash while copying into a temp file, then rename into place.

        Hashing the copy (not the source beforehand) means a source that changes while we read
        it can never be stored under the wrong name. The rename is atomic, so readers see either
        no file or the whole file.
        """
        staging = self.root / ".tmp"
        staging.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=staging, prefix="put-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            dest = self._location(sha)
            if dest.exists() and sha256_file(dest) == sha:
                return sha  # identical content already stored
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.replace(tmp, dest)  # also repairs a corrupted copy of the same sha
            return sha
        finally:
            tmp.unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------------
    def exists(self, sha256: str) -> bool:
        return self._location(sha256).is_file()

    def path(self, sha256: str, *, verify: bool = True) -> Path:
        location = self._location(sha256)
        if not location.is_file():
            raise NotFoundError(f"artifact {sha256} is not in the artifact store")
        if verify:
            actual = sha256_file(location)
            if actual != sha256:
                raise ArtifactIntegrityError(
                    f"artifact {sha256} failed its integrity check: the stored bytes now hash to "
                    f"{actual}; refusing to load it"
                )
        return location

    def read_bytes(self, sha256: str) -> bytes:
        location = self.path(sha256, verify=False)
        data = location.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:  # verify the bytes we return, not a second read of the file
            raise ArtifactIntegrityError(
                f"artifact {sha256} failed its integrity check: the stored bytes now hash to "
                f"{actual}; refusing to load it"
            )
        return data

    def iter_shas(self) -> Iterator[str]:
        for child in sorted(self.root.glob("??/*")):
            if _SHA256.match(child.name):
                yield child.name

    def _location(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise InvalidRequestError("an artifact id must be 64 lowercase hex characters (sha256)")
        return self.root / sha256[:2] / sha256

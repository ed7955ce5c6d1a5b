"""Content-addressed artifact store: a model's bytes are named by their sha256.

Naming by content makes registration idempotent (the same bytes are stored once) and makes
tampering detectable: ``path`` re-hashes the file on every verified call, so an artifact that was
edited on disk after registration is refused at load instead of silently served.

``MEDSERVE_ARTIFACT_URI=s3://bucket/prefix`` puts the same layout in S3-compatible object storage
(``S3ArtifactStore``), shared by every node of a cluster, read through a bounded local cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medserve.core.errors import (
    ArtifactIntegrityError,
    InvalidRequestError,
    NotFoundError,
    StoreError,
)

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


# -- S3-compatible object storage -----------------------------------------------------------------

_S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> ``(bucket, prefix)`` (prefix without slashes at its ends)."""
    found = _S3_URI.match(uri)
    if found is None:
        raise InvalidRequestError(
            f"MEDSERVE_ARTIFACT_URI must look like s3://bucket/prefix (a valid bucket name), "
            f"not {uri!r}"
        )
    return found["bucket"], (found["prefix"] or "").strip("/")


class S3ArtifactStore(ArtifactStore):
    """Artifacts in an S3-compatible bucket under ``prefix/ab/abcdef...``, read through a local
    cache bounded in size, so that every node of a cluster serves the same bytes.

    The bucket is not trusted more than a local disk: every load (``path``, ``read_bytes``)
    hashes the bytes it hands out, whether they came from the bucket just now or from the cache,
    and an object whose bytes do not match its name is refused (``ArtifactIntegrityError``) and
    never enters the cache. A cached copy that no longer matches is dropped and fetched again.
    The cache is evicted least-recently-used (by modification time, which each hit refreshes)
    down to ``cache_max_bytes``; a file a runtime still has open or mapped stays readable after
    eviction (POSIX unlink).

    Endpoint, region and credentials come from boto3's own environment (``AWS_ENDPOINT_URL_S3``
    or ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``/``..._SECRET_...``, an
    instance role, ...), as every S3 tool reads them.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        cache_root: Path,
        *,
        cache_max_bytes: int = 10 << 30,
        client: Any = None,
    ) -> None:
        super().__init__(cache_root)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.cache_max_bytes = cache_max_bytes
        self._client = client
        self._client_lock = threading.Lock()
        self._evict_lock = threading.Lock()

    @classmethod
    def from_uri(cls, uri: str, cache_root: Path, *, cache_max_bytes: int) -> S3ArtifactStore:
        bucket, prefix = parse_s3_uri(uri)
        return cls(bucket, prefix, cache_root, cache_max_bytes=cache_max_bytes)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    try:
                        import boto3  # noqa: PLC0415 (optional: the s3 extra)
                    except ImportError as exc:
                        raise StoreError(
                            "S3 artifacts need boto3: pip install 'medserve[s3]'"
                        ) from exc
                    self._client = boto3.client("s3")
        return self._client

    def _key(self, sha256: str) -> str:
        self._location(sha256)  # validates the id
        name = f"{sha256[:2]}/{sha256}"
        return f"{self.prefix}/{name}" if self.prefix else name

    # -- writing ---------------------------------------------------------------------------
    def _ingest(self, chunks: Iterable[bytes]) -> str:
        """Hash into the local cache first (the local store's atomic, hashed copy), then upload
        that file unless the bucket already holds the object: the bucket's name for the bytes
        is the hash of the bytes medserve read, never one a caller claimed."""
        sha = super()._ingest(chunks)
        if not self.exists(sha):
            try:
                self.client.upload_file(
                    str(self._location(sha)),
                    self.bucket,
                    self._key(sha),
                    ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                )
            except Exception as exc:  # botocore's errors: no credentials, no bucket, network
                raise StoreError(f"could not upload artifact {sha} to {self.uri}: {exc}") from exc
        self._evict(keep=sha)
        return sha

    # -- reading ---------------------------------------------------------------------------
    def exists(self, sha256: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(sha256))
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise StoreError(f"could not reach {self.uri}: {exc}") from exc
        return True

    def path(self, sha256: str, *, verify: bool = True) -> Path:
        """The verified local copy of an artifact (always verified: a cache is not evidence)."""
        location = self._location(sha256)
        if location.is_file():
            if sha256_file(location) == sha256:
                _touch(location)
                return location
            location.unlink(missing_ok=True)  # a damaged cache copy: fetch the bucket's again
        self._download(sha256, location)
        self._evict(keep=sha256)
        return location

    # read_bytes: the base class's (this ``path`` fetches and verifies the copy, then the bytes
    # returned are hashed again)

    def _download(self, sha256: str, location: Path) -> None:
        staging = self.root / ".tmp"
        staging.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=staging, prefix="get-")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            try:
                self.client.download_file(self.bucket, self._key(sha256), str(tmp))
            except Exception as exc:
                if _is_missing(exc):
                    raise NotFoundError(
                        f"artifact {sha256} is not in the artifact store ({self.uri})"
                    ) from exc
                raise StoreError(
                    f"could not fetch artifact {sha256} from {self.uri}: {exc}"
                ) from exc
            actual = sha256_file(tmp)
            if actual != sha256:
                raise ArtifactIntegrityError(
                    f"artifact {sha256} failed its integrity check: the object in {self.uri} "
                    f"hashes to {actual}; refusing to load it"
                )
            location.parent.mkdir(parents=True, exist_ok=True)
            tmp.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.replace(tmp, location)
        finally:
            tmp.unlink(missing_ok=True)

    def iter_shas(self) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        start = f"{self.prefix}/" if self.prefix else ""
        for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
            for item in page.get("Contents", []):
                name = str(item["Key"]).rsplit("/", 1)[-1]
                if _SHA256.match(name):
                    yield name

    # -- the cache bound -------------------------------------------------------------------
    def cached_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("??/*") if p.is_file())

    def _evict(self, keep: str) -> None:
        """Remove the least recently used cached artifacts until the cache fits its bound
        (``keep``, the one just used, stays even if it alone is larger)."""
        with self._evict_lock:
            entries = []
            for child in self.root.glob("??/*"):
                try:
                    info = child.stat()
                except FileNotFoundError:  # another process evicted it a moment ago
                    continue
                entries.append((info.st_mtime_ns, info.st_size, child))
            total = sum(size for _, size, _ in entries)
            for _, size, child in sorted(entries):
                if total <= self.cache_max_bytes:
                    break
                if child.name == keep:
                    continue
                child.unlink(missing_ok=True)
                total -= size


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only cache still serves
        os.utime(path)


def _is_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


def open_artifact_store(
    uri: str | None, local_root: Path, *, cache_max_bytes: int = 10 << 30
) -> ArtifactStore:
    """The artifact store a URI names: ``s3://bucket/prefix`` (``local_root`` is then its read
    cache), else the local directory ``local_root``."""
    if uri and uri.startswith("s3://"):
        return S3ArtifactStore.from_uri(uri, local_root, cache_max_bytes=cache_max_bytes)
    if uri and not uri.startswith("file://") and "://" in uri:
        raise InvalidRequestError(
            f"MEDSERVE_ARTIFACT_URI must be s3://bucket/prefix or file:///path, not {uri!r}"
        )
    return ArtifactStore(Path(uri.removeprefix("file://")) if uri else local_root)

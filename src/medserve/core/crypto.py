"""Encryption at rest: AES-256-GCM envelopes tagged with the id of the key that sealed them.

A keyring holds every key ever used and names one ``primary``: new data is sealed with the
primary, old data is opened with whichever key its envelope names, so rotation (add a key, make
it primary) never makes old entries unreadable; ``reseal`` moves an entry to the primary key.
Keys come from ``MEDSERVE_ENCRYPTION_KEYS`` (the JSON below) or a file, by default
``home/keys/data_keys.json`` (mode 0600, created on first use)::

    {"primary": "k2", "keys": {"k1": "<base64 32 bytes>", "k2": "<base64 32 bytes>"}}

Envelope: ``b"MSE1" | len(key_id) (1 byte) | key_id | nonce (12 bytes) | ciphertext+tag``.
The key id and the caller's associated data are authenticated, so an envelope cannot be
moved to another record (pass the record's id as ``aad``) or relabelled to another key.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medserve.core.errors import MedserveError

MAGIC = b"MSE1"
_NONCE = 12
ENV_VAR = "MEDSERVE_ENCRYPTION_KEYS"


class DecryptionError(MedserveError):
    """An envelope that cannot be opened: unknown key, wrong key, altered bytes or context."""

    code = "decryption_failed"


@dataclass
class Keyring:
    keys: dict[str, bytes]
    primary: str
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.primary not in self.keys:
            raise ValueError("the primary key id is not in the keyring")
        for kid, key in self.keys.items():
            if len(key) != 32 or not 0 < len(kid.encode()) < 256:
                raise ValueError(f"key {kid!r} must be 32 bytes (AES-256) with a short id")

    # -- loading and saving -----------------------------------------------------------------
    @classmethod
    def generate(cls, path: Path | None = None) -> Keyring:
        kid = f"k{secrets.token_hex(4)}"
        return cls({kid: AESGCM.generate_key(bit_length=256)}, kid, path)

    @classmethod
    def from_json(cls, text: str, path: Path | None = None) -> Keyring:
        data = json.loads(text)
        keys = {str(k): base64.b64decode(v) for k, v in data["keys"].items()}
        return cls(keys, str(data["primary"]), path)

    def to_json(self) -> str:
        keys = {k: base64.b64encode(v).decode() for k, v in self.keys.items()}
        return json.dumps({"primary": self.primary, "keys": keys}, indent=2)

    @classmethod
    def load(
        cls,
        home: Path,
        key_file: Path | None = None,
        *,
        env_var: str = ENV_VAR,
        file_name: str = "data_keys.json",
    ) -> Keyring:
        """From the environment variable, else ``key_file``, else the home's key file (the
        audit chain's keys use their own variable and file)."""
        env = os.environ.get(env_var)
        if env:
            return cls.from_json(env)
        path = key_file or Path(home) / "keys" / file_name
        if path.exists():
            return cls.from_json(path.read_text(), path)
        ring = cls.generate(path)
        ring.save()
        return cls.from_json(path.read_text(), path)  # a concurrent creator may have won

    def save(self) -> None:
        if self.path is None:
            raise ValueError("this keyring came from the environment: update the variable")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def rotate(self) -> str:
        """Add a new primary key (old keys stay for reading); returns its id."""
        if self.path is None:
            raise ValueError("this keyring came from the environment: update the variable")
        kid = f"k{secrets.token_hex(4)}"
        self.keys[kid] = AESGCM.generate_key(bit_length=256)
        self.primary = kid
        if self.path is not None:
            self.save()
        return kid

    # -- sealing ----------------------------------------------------------------------------
    def encrypt(self, plaintext: bytes, *, aad: bytes = b"") -> bytes:
        kid = self.primary.encode()
        header = MAGIC + bytes([len(kid)]) + kid
        nonce = os.urandom(_NONCE)
        return (
            header + nonce + AESGCM(self.keys[self.primary]).encrypt(nonce, plaintext, header + aad)
        )

    def key_id_of(self, blob: bytes) -> str:
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 1:
            raise DecryptionError("not a medserve encrypted envelope")
        n = blob[len(MAGIC)]
        return blob[len(MAGIC) + 1 : len(MAGIC) + 1 + n].decode("utf-8", "replace")

    def decrypt(self, blob: bytes, *, aad: bytes = b"") -> bytes:
        kid = self.key_id_of(blob)
        key = self.keys.get(kid)
        if key is None:
            raise DecryptionError(f"encrypted with key {kid!r}, which this keyring does not hold")
        start = len(MAGIC) + 1 + len(kid.encode())
        header, nonce, sealed = blob[:start], blob[start : start + _NONCE], blob[start + _NONCE :]
        try:
            return AESGCM(key).decrypt(nonce, sealed, header + aad)
        except InvalidTag as exc:
            raise DecryptionError(
                "encrypted data failed authentication (altered or wrong context)"
            ) from exc

    def reseal(self, blob: bytes, *, aad: bytes = b"") -> bytes:
        """The same plaintext sealed with the primary key (after a rotation)."""
        if self.key_id_of(blob) == self.primary:
            return blob
        return self.encrypt(self.decrypt(blob, aad=aad), aad=aad)

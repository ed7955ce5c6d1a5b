"""Encryption at rest: unreadable without the key, readable after rotation, tamper-evident."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from medserve.core.crypto import DecryptionError, Keyring

PAYLOAD = b'{"mrn": "A1234567", "name": "John Smith", "glucose": 5.6}'


def test_sealed_payload_hides_the_plaintext_and_opens_with_the_key(tmp_path: Path) -> None:
    ring = Keyring.load(tmp_path)
    blob = ring.encrypt(PAYLOAD, aad=b"pred-1")
    assert b"A1234567" not in blob
    assert b"John" not in blob
    assert ring.decrypt(blob, aad=b"pred-1") == PAYLOAD
    assert ring.encrypt(PAYLOAD) != ring.encrypt(PAYLOAD)  # fresh nonce each time
    key_file = tmp_path / "keys" / "data_keys.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert Keyring.load(tmp_path).decrypt(blob, aad=b"pred-1") == PAYLOAD  # reloaded from file


def test_unreadable_without_the_key(tmp_path: Path) -> None:
    blob = Keyring.load(tmp_path / "a").encrypt(PAYLOAD)
    stranger = Keyring.load(tmp_path / "b")
    with pytest.raises(DecryptionError, match="does not hold"):
        stranger.decrypt(blob)
    # Same key id, different key bytes: authentication fails, nothing leaks.
    kid = Keyring.load(tmp_path / "a").primary
    impostor = Keyring({kid: b"\x01" * 32}, kid)
    with pytest.raises(DecryptionError, match="authentication"):
        impostor.decrypt(blob)


def test_altered_bytes_or_moved_envelope_refused(tmp_path: Path) -> None:
    ring = Keyring.load(tmp_path)
    blob = bytearray(ring.encrypt(PAYLOAD, aad=b"pred-1"))
    with pytest.raises(DecryptionError):
        ring.decrypt(bytes(blob), aad=b"pred-2")  # attached to another record
    blob[-1] ^= 1
    with pytest.raises(DecryptionError):
        ring.decrypt(bytes(blob), aad=b"pred-1")
    with pytest.raises(DecryptionError, match="not a medserve"):
        ring.decrypt(PAYLOAD)


def test_rotation_keeps_old_entries_readable_and_reseals(tmp_path: Path) -> None:
    ring = Keyring.load(tmp_path)
    old_id = ring.primary
    old_blob = ring.encrypt(PAYLOAD)
    new_id = ring.rotate()
    assert new_id != old_id
    reloaded = Keyring.load(tmp_path)  # the rotation was saved
    assert reloaded.primary == new_id
    assert reloaded.decrypt(old_blob) == PAYLOAD
    assert reloaded.key_id_of(reloaded.encrypt(PAYLOAD)) == new_id
    resealed = reloaded.reseal(old_blob)
    assert reloaded.key_id_of(resealed) == new_id
    assert reloaded.decrypt(resealed) == PAYLOAD
    # Once every entry is resealed, the retired key can be dropped.
    retired = Keyring({new_id: reloaded.keys[new_id]}, new_id)
    assert retired.decrypt(resealed) == PAYLOAD
    with pytest.raises(DecryptionError):
        retired.decrypt(old_blob)


def test_keys_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ring = Keyring.generate()
    monkeypatch.setenv("MEDSERVE_ENCRYPTION_KEYS", ring.to_json())
    loaded = Keyring.load(tmp_path)
    assert loaded.decrypt(ring.encrypt(PAYLOAD)) == PAYLOAD
    assert not (tmp_path / "keys").exists()
    with pytest.raises(ValueError, match="environment"):
        loaded.rotate()
    bad = json.loads(ring.to_json())
    bad["primary"] = "missing"
    with pytest.raises(ValueError, match="primary"):
        Keyring.from_json(json.dumps(bad))

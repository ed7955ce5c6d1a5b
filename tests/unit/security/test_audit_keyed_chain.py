"""The keyed chain: rows sealed with an HMAC of a key kept outside the database, so rewriting
rows and recomputing the hashes without the key is caught; anchors catch truncation and wipes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from medserve.core.audit import (
    GENESIS,
    AuditEntry,
    AuditKeyError,
    AuditLog,
    load_audit_keys,
    row_hash,
)
from medserve.core.crypto import Keyring
from medserve.core.registry.service import Registry
from medserve.core.store.tables_security import sec_audit
from medserve.faces.cli import app


@pytest.fixture
def keys(home: Path) -> Keyring:
    return load_audit_keys(home)


@pytest.fixture
def sealed(registry: Registry, keys: Keyring) -> AuditLog:
    log = AuditLog(registry.store.engine, keys=keys)  # type: ignore[attr-defined]
    log.seal()
    log.append([AuditEntry(actor=f"key:user{i}", action="predict", outcome=200) for i in range(6)])
    return log


def _rows(log: AuditLog) -> list[dict[str, Any]]:
    with log.engine.connect() as conn:
        return [
            dict(r) for r in conn.execute(sa.select(sec_audit).order_by(sec_audit.c.seq)).mappings()
        ]


def _rewrite(log: AuditLog, change: dict[int, dict[str, Any]], *, unseal: bool = False) -> None:
    """What a person with database write access can do: edit rows, then recompute every later
    hash with the code's own hash function (but without the key)."""
    prev = GENESIS
    with log.engine.begin() as conn:
        for row in _rows(log):
            row.update(change.get(row["seq"], {}))
            if unseal:
                row["chain_key"] = None
            row["prev_hash"] = prev
            row["hash"] = row_hash(row, prev)  # no key: plain sha256
            prev = row["hash"]
            values = {k: row[k] for k in ("actor", "prev_hash", "hash", "chain_key")}
            conn.execute(sa.update(sec_audit).where(sec_audit.c.seq == row["seq"]).values(**values))


def test_every_row_names_the_key_that_sealed_it(sealed: AuditLog, keys: Keyring) -> None:
    rows = _rows(sealed)
    assert {r["chain_key"] for r in rows} == {keys.primary}
    assert rows[0]["action"] == "audit_key_in_use"
    assert sealed.verify().ok


def test_a_rewrite_without_the_key_is_caught_and_located(sealed: AuditLog) -> None:
    _rewrite(sealed, {3: {"actor": "key:nobody"}})
    result = sealed.verify()
    assert not result.ok
    assert result.first_bad_seq == 1  # the first recomputed row no longer carries a valid seal


def test_unsealing_the_whole_trail_is_caught(sealed: AuditLog) -> None:
    _rewrite(sealed, {3: {"actor": "key:nobody"}}, unseal=True)
    assert AuditLog(sealed.engine).verify().ok  # without the keys it would pass ...
    result = sealed.verify()  # ... but keys exist, and no row is sealed with them
    assert not result.ok
    assert "no entry is sealed" in result.reason


def test_rotation_keeps_old_rows_verifiable(sealed: AuditLog, keys: Keyring) -> None:
    old = keys.primary
    new = keys.rotate()
    sealed.seal()
    sealed.append([AuditEntry(actor="key:after", action="predict", outcome=200)])
    assert [r["chain_key"] for r in _rows(sealed)][-2:] == [new, new]
    assert sealed.verify().ok
    del keys.keys[old]
    result = sealed.verify()
    assert not result.ok
    assert old in result.reason


def test_an_anchor_catches_truncation_and_wipes(sealed: AuditLog) -> None:
    anchor = sealed.anchor()
    assert sealed.verify(anchor).ok
    with sealed.engine.begin() as conn:
        conn.execute(sa.delete(sec_audit).where(sec_audit.c.seq >= anchor["seq"] - 1))
    truncated = sealed.verify(anchor)
    assert not truncated.ok
    assert "truncated" in truncated.reason
    with sealed.engine.begin() as conn:
        conn.execute(sa.delete(sec_audit))
    assert sealed.verify().ok  # an empty trail has nothing to contradict it ...
    assert not sealed.verify(anchor).ok  # ... but the anchor does


def test_cli_anchor_and_verify(sealed: AuditLog, tmp_path: Path) -> None:
    runner = CliRunner()
    anchor = tmp_path / "anchor.json"
    made = runner.invoke(app, ["audit", "anchor", "--output", str(anchor)])
    assert made.exit_code == 0, made.output
    assert orjson.loads(anchor.read_bytes())["seq"] == len(_rows(sealed))
    ok = runner.invoke(app, ["audit", "verify", "--anchor", str(anchor)])
    assert ok.exit_code == 0, ok.output
    forged = {**orjson.loads(anchor.read_bytes()), "seq": 1}
    anchor.write_bytes(orjson.dumps(forged))
    refused = runner.invoke(app, ["audit", "verify", "--anchor", str(anchor)])
    assert refused.exit_code == 1
    assert "altered" in refused.output


def test_a_trail_without_the_keys_cannot_append_to_a_sealed_one(sealed: AuditLog) -> None:
    """An unsealed row after sealed ones would read as tampering: it is refused instead, and
    the trail still verifies."""
    unkeyed = AuditLog(sealed.engine)
    with pytest.raises(AuditKeyError, match="sealed"):
        unkeyed.append([AuditEntry(actor="key:x", action="predict", outcome=200)])
    assert sealed.verify().ok

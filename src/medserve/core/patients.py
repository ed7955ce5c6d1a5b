"""Per-patient keys: how the audit trail refers to a patient so that erasure can unlink it.

The prediction log and outcomes join on the home-wide pseudonym ``P = pseudonymize(id, salt)``.
Whoever holds the salt and a raw identifier can recompute ``P``, so a ``P`` written into the
append-only, hash-chained audit trail would link that trail to the patient for ever (rows of a
chain cannot be rewritten without breaking it). The trail therefore stores a *reference*
``R = "pat_" + HMAC-SHA256(K_P, P)`` under a random key ``K_P`` of that patient alone (table
``patient_keys``). Erasure deletes ``K_P`` (crypto-shredding): ``R`` stays in the chain, which
still verifies, but nobody can recompute it from the identifier any more.

Keys are read inside the caller's transaction every time and never cached across transactions,
so an erasure committed by another process takes effect at once; a patient seen again after
erasure gets a new key (their new records are new records, unlinkable to the erased ones).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from medserve.core.store.tables_privacy import patient_keys

__all__ = ["KEY_BYTES", "REFERENCE_PREFIX", "PatientKeys", "reference"]

KEY_BYTES = 32
REFERENCE_PREFIX = "pat_"
_REFERENCE_HEX = 32  # 128 bits: unguessable and collision-free for any patient count
_CHUNK = 400  # pseudonyms per IN (...): far under SQLite's bound on bound parameters


def reference(key: bytes, pseudonym: str) -> str:
    """The audit reference of ``pseudonym`` under its patient key."""
    digest = hmac.new(key, pseudonym.encode("utf-8"), hashlib.sha256).hexdigest()
    return REFERENCE_PREFIX + digest[:_REFERENCE_HEX]


def _chunks(values: list[str]) -> Iterable[list[str]]:
    for at in range(0, len(values), _CHUNK):
        yield values[at : at + _CHUNK]


class PatientKeys:
    """Get-or-create and destroy patient keys, always in the caller's transaction."""

    def refs(self, conn: Connection, pseudonyms: set[str]) -> dict[str, str]:
        """``{P: R}`` for every pseudonym, creating the keys that do not exist yet.

        Call it inside a write transaction (the rows it creates commit with what uses them).
        Safe under concurrent writers: a key is inserted with ``ON CONFLICT DO NOTHING`` and
        then read back, so two transactions that race on a new patient agree on the winner's
        key (PostgreSQL waits for the winner's commit; SQLite writers are serialised already).
        """
        wanted = sorted(p for p in pseudonyms if p)
        if not wanted:
            return {}
        keys = self._select(conn, wanted)
        missing = [p for p in wanted if p not in keys]
        if missing:
            now = datetime.now(UTC)
            rows = [
                {"pseudonym": p, "key": secrets.token_bytes(KEY_BYTES), "created_at": now}
                for p in missing
            ]
            conn.execute(_insert_ignoring_conflicts(conn), rows)
            keys.update(self._select(conn, missing))
        return {p: reference(keys[p], p) for p in wanted}

    def forget(self, conn: Connection, pseudonym: str) -> bool:
        """Destroy the patient's key: every reference made with it becomes unlinkable.

        Returns whether a key existed."""
        t = patient_keys
        return bool(conn.execute(t.delete().where(t.c.pseudonym == pseudonym)).rowcount)

    @staticmethod
    def _select(conn: Connection, pseudonyms: list[str]) -> dict[str, bytes]:
        t = patient_keys
        found: dict[str, bytes] = {}
        for chunk in _chunks(pseudonyms):
            query = sa.select(t.c.pseudonym, t.c.key).where(t.c.pseudonym.in_(chunk))
            found.update({str(p): bytes(k) for p, k in conn.execute(query)})
        return found


def _insert_ignoring_conflicts(conn: Connection) -> sa.Insert:
    """``INSERT ... ON CONFLICT (pseudonym) DO NOTHING`` in the connection's dialect."""
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(patient_keys).on_conflict_do_nothing(
            index_elements=[patient_keys.c.pseudonym]
        )
    if name == "sqlite":
        return sqlite.insert(patient_keys).on_conflict_do_nothing(
            index_elements=[patient_keys.c.pseudonym]
        )
    return sa.insert(patient_keys)  # another backend: a race would fail loudly, not corrupt

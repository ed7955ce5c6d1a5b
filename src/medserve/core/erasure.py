"""Erasure of one patient: their predictions, inputs and outcomes leave every store; the audit
trail stays (HIPAA), keeps verifying, and can no longer be linked to them.

What is removed, in one write transaction:

- the patient's entries of the packed prediction log (``mon_prediction_batches``): a row is
  *rewritten* without them (ids, times, patients, sites, inputs, outputs and latencies lose the
  same positions; ``n`` and the time span are recomputed) and deleted when every entry was
  theirs. Rewriting rather than blanking keeps counts, drift and live performance honest (a
  blank entry would still count as a prediction); the outcomes of the other entries of a
  rewritten row move with their entry (``mon_outcomes`` is keyed by position);
- their outcomes (``mon_outcomes``) and the by-id index rows of their requests
  (``mon_prediction_ids``) that no remaining entry shares;
- their patient key (``patient_keys``): crypto-shredding of every audit reference
  (``medserve.core.patients``);
- the records of the worker journals, through the ``journals`` hook (called with each
  pseudonym, inside the transaction, so a journal replay cannot race the erasure on SQLite).

Then an audit entry ``privacy.patient_erased`` goes through the outbox in the same transaction:
who, why (the reason de-identified, the identifier removed from it) and the counts; it names no
identifier, pseudonym or reference. On SQLite the write-ahead log is then checkpointed and
truncated: with ``secure_delete`` on (every connection, ``core.store.sql``) the freed bytes are
zeroed in the database file, and the old page images in the WAL are gone.

A patient is logged under the pseudonym of the identifier as the caller sent it; CDS Hooks and
FHIR requests name them ``Patient/<id>``. Both forms are erased (``pseudonyms_of``).
Limits (backups, PostgreSQL dead tuples until VACUUM, CDS feedback that holds no link to a
patient) are in ``docs/privacy.md``.
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping

from medserve.core.errors import InvalidRequestError, StoreError
from medserve.core.patients import PatientKeys
from medserve.core.phi import deidentify_text, pseudonymize
from medserve.core.prediction_log import from_us, npy_bytes
from medserve.core.store.outbox import record_change
from medserve.core.store.tables_monitoring import (
    mon_outcomes,
    mon_prediction_batches,
    mon_prediction_ids,
)
from medserve.core.store.unit_of_work import UnitOfWork

__all__ = [
    "ERASED_ACTION",
    "ErasureReport",
    "JournalScrubber",
    "erase_patient",
    "pseudonyms_of",
    "truncate_wal",
]

ERASED_ACTION = "privacy.patient_erased"
MAX_PATIENT_ID = 256
MAX_REASON = 500
_FHIR_PREFIX = "patient/"  # compared after casefold, as pseudonymize normalises
_REQUEST_ID_STORED = 96  # mon_prediction_ids.request_id

# Scrubs one pseudonym's records from the worker journals; returns how many it removed.
JournalScrubber = Callable[[str], int]


@dataclass(frozen=True)
class ErasureReport:
    """What one erasure removed (counts only: nothing here identifies the patient)."""

    predictions: int = 0  # prediction-log entries
    batches_rewritten: int = 0  # packed rows that kept other patients' entries
    batches_deleted: int = 0  # packed rows that held only this patient's entries
    outcomes: int = 0
    request_ids: int = 0  # by-id index rows (mon_prediction_ids)
    patient_keys: int = 0  # keys destroyed: audit references made unlinkable
    journal_records: int = 0
    wal_truncated: bool | None = None  # SQLite: WAL checkpointed and emptied; None elsewhere

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """The counts as the audit entry and the CLI show them."""
        fields = self.to_dict()
        fields.pop("wal_truncated")
        return " ".join(f"{name}={value}" for name, value in fields.items())


@dataclass
class _Tally:
    """The counts of an erasure in progress (``ErasureReport`` without the checkpoint)."""

    predictions: int = 0
    batches_rewritten: int = 0
    batches_deleted: int = 0
    outcomes: int = 0
    request_ids: int = 0
    patient_keys: int = 0
    journal_records: int = 0


def pseudonyms_of(patient_id: str, salt: bytes) -> set[str]:
    """Every pseudonym the patient can be logged under: the identifier as given and its FHIR
    reference form (``Patient/<id>``, how CDS Hooks and FHIR bundles name a patient)."""
    text = patient_id.strip()
    forms = {text}
    if text.casefold().startswith(_FHIR_PREFIX):
        bare = text[len(_FHIR_PREFIX) :].strip()
        if bare:
            forms.add(bare)
    else:
        forms.add("Patient/" + text)
    return {pseudonymize(form, salt=salt) for form in forms}


def erase_patient(
    engine: Engine,
    *,
    salt: bytes,
    patient_id: str,
    actor: str,
    reason: str | None = None,
    journals: JournalScrubber | None = None,
) -> ErasureReport:
    """Erase one patient from every store (see the module docstring); idempotent.

    ``journals`` scrubs the worker journals of one pseudonym (provided by the journal's
    owner; without it journals are not touched and count 0).
    """
    text = _checked_id(patient_id)
    pseudonyms = pseudonyms_of(text, salt)
    counts = _Tally()
    uow = UnitOfWork(engine, "privacy")
    with uow.write() as conn:
        if conn.dialect.name == "postgresql":
            # Outcomes are attached by position: no attach may read a row's old layout and
            # write after the rewrite. Readers of these tables wait for the erasure (brief).
            conn.exec_driver_sql(
                "LOCK TABLE mon_prediction_batches, mon_outcomes, mon_prediction_ids"
                " IN ACCESS EXCLUSIVE MODE"
            )
        if journals is not None:
            for pseudonym in sorted(pseudonyms):
                counts.journal_records += int(journals(pseudonym))
        for row in _batches_naming(conn, pseudonyms):
            _erase_from_batch(conn, row, pseudonyms, counts)
        keys = PatientKeys()
        counts.patient_keys = sum(keys.forget(conn, p) for p in sorted(pseudonyms))
        report = ErasureReport(**asdict(counts))
        why = _safe_reason(reason, text)
        record_change(
            conn,
            ERASED_ACTION,
            "-",
            actor=actor,
            reason=f"{why}; {report.summary()}" if why else report.summary(),
        )
    return ErasureReport(**asdict(counts), wal_truncated=truncate_wal(engine))


def truncate_wal(engine: Engine) -> bool | None:
    """SQLite: copy the write-ahead log into the database and empty it, so old page images
    (the bytes before an erasure) do not stay in ``-wal``. ``True`` when complete, ``False``
    when a reader still held an old snapshot (the next checkpoint finishes it); ``None`` on
    other backends."""
    if engine.dialect.name != "sqlite":
        return None
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            busy, _, _ = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            cursor.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot checkpoint the SQLite WAL: {type(exc).__name__}") from exc
    finally:
        raw.close()
    return int(busy) == 0


# -- internals ------------------------------------------------------------------------------


def _checked_id(patient_id: str) -> str:
    text = str(patient_id).strip()
    if not text:
        raise InvalidRequestError(
            "patient_id must not be empty",
            details=[{"field": "patient_id", "rule": "required", "message": "empty"}],
        )
    if len(text) > MAX_PATIENT_ID:
        raise InvalidRequestError(
            f"patient_id is longer than {MAX_PATIENT_ID} characters",
            details=[{"field": "patient_id", "rule": "max_length", "message": "too long"}],
        )
    return text


def _safe_reason(reason: str | None, patient_id: str) -> str:
    """The operator's reason without the identifier (any case) and through Safe Harbor
    de-identification: the erasure's audit entry must not name the patient it erased."""
    if not reason or not reason.strip():
        return ""
    text = reason.strip()
    lowered, needle = text.casefold(), patient_id.casefold()
    if needle and len(lowered) == len(text):  # casefold kept the offsets: replace in place
        parts, at = [], 0
        while (found := lowered.find(needle, at)) >= 0:
            parts.append(text[at:found] + "[PATIENT]")
            at = found + len(needle)
        text = "".join(parts) + text[at:]
    elif needle in lowered:
        text = "[reason withheld: it named the patient]"
    return deidentify_text(text)[:MAX_REASON]


def _batches_naming(conn: Connection, pseudonyms: set[str]) -> list[RowMapping]:
    """The packed rows whose ``patients`` array names one of ``pseudonyms`` (a LIKE narrows
    the scan; each candidate is checked exactly when it is rewritten)."""
    b = mon_prediction_batches
    near = sa.or_(*(b.c.patients.like(f'%"{p}"%') for p in sorted(pseudonyms)))
    query = sa.select(b).where(b.c.patients.is_not(None), near).order_by(b.c.seq)
    return list(conn.execute(query).mappings())


def _erase_from_batch(
    conn: Connection, row: RowMapping, pseudonyms: set[str], counts: _Tally
) -> None:
    seq, n = int(row["seq"]), int(row["n"])
    patients: list[str | None] = orjson.loads(row["patients"])
    gone = [i for i, p in enumerate(patients) if p in pseudonyms]
    if not gone:
        return  # the LIKE matched something else (``_`` is a wildcard)
    if len(patients) != n:
        raise StoreError(f"prediction-log row {seq} is inconsistent; nothing was erased")
    counts.predictions += len(gone)
    o, ids_t = mon_outcomes, mon_prediction_ids
    outcomes = conn.execute(sa.select(o).where(o.c.batch_seq == seq)).mappings().all()
    conn.execute(o.delete().where(o.c.batch_seq == seq))
    removed = set(gone)
    counts.outcomes += sum(1 for r in outcomes if r["idx"] in removed)
    if len(gone) == n:
        deleted = conn.execute(ids_t.delete().where(ids_t.c.batch_seq == seq))
        counts.request_ids += deleted.rowcount
        conn.execute(mon_prediction_batches.delete().where(mon_prediction_batches.c.seq == seq))
        counts.batches_deleted += 1
        return
    keep = [i for i in range(n) if i not in removed]
    conn.execute(
        mon_prediction_batches.update()
        .where(mon_prediction_batches.c.seq == seq)
        .values(**_rewritten(row, keep))
    )
    position = {old: new for new, old in enumerate(keep)}
    moved = [
        {
            "batch_seq": seq,
            "idx": position[r["idx"]],
            "outcome": r["outcome"],
            "outcome_at": r["outcome_at"],
        }
        for r in outcomes
        if r["idx"] in position
    ]
    if moved:
        conn.execute(o.insert(), moved)
    ids: list[str] = orjson.loads(row["ids"])
    kept_rids = {_request_id(ids[i]) for i in keep}
    gone_rids = {_request_id(ids[i]) for i in gone} - kept_rids
    if gone_rids:
        deleted = conn.execute(
            ids_t.delete().where(
                ids_t.c.batch_seq == seq, ids_t.c.request_id.in_(sorted(gone_rids))
            )
        )
        counts.request_ids += deleted.rowcount
    counts.batches_rewritten += 1


def _request_id(prediction_id: str) -> str:
    """The request id of a prediction id (``<request id>-<row>``), as the index stores it."""
    return prediction_id.rpartition("-")[0][:_REQUEST_ID_STORED]


def _rewritten(row: RowMapping, keep: list[int]) -> dict[str, Any]:
    """The packed row's columns with only the entries at ``keep`` (in order)."""
    n = int(row["n"])

    def pick(column: str) -> list[Any]:
        values: list[Any] = orjson.loads(row[column])
        if len(values) != n:
            raise StoreError(f"prediction-log row {row['seq']}: {column} is inconsistent")
        return [values[i] for i in keep]

    def dumps(value: Any) -> str:
        return orjson.dumps(value).decode()

    times = pick("times")
    outputs: dict[str, list[Any]] = orjson.loads(row["outputs"])
    for name, column in outputs.items():
        if not isinstance(column, list) or len(column) != n:
            raise StoreError(f"prediction-log row {row['seq']}: output {name!r} is inconsistent")
        outputs[name] = [column[i] for i in keep]
    values: dict[str, Any] = {
        "n": len(keep),
        "first_at": from_us(min(times)),
        "last_at": from_us(max(times)),
        "ids": dumps(pick("ids")),
        "times": dumps(times),
        "outputs": dumps(outputs),
        "latency_ms": dumps(pick("latency_ms")),
    }
    for name in ("patients", "sites"):  # NULL when no kept entry names one (as logged)
        kept = pick(name) if row[name] is not None else []
        values[name] = dumps(kept) if any(kept) else None
    if row["inputs_npy"] is not None:
        matrix = np.load(io.BytesIO(row["inputs_npy"]), allow_pickle=False)
        if matrix.shape[0] != n:
            raise StoreError(f"prediction-log row {row['seq']}: inputs are inconsistent")
        values["inputs_npy"] = npy_bytes(np.ascontiguousarray(matrix[keep]))
    elif row["inputs"] is not None:
        values["inputs"] = dumps(pick("inputs"))
    return values

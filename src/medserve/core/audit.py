"""The tamper-evident audit trail: an append-only, hash-chained table.

Every row has a dense sequence number and ``hash = HMAC(audit key, fields + prev_hash)`` (plain
sha256 for rows from before audit keys). Editing a row breaks its own hash; deleting or reordering
rows breaks the link to the previous hash (and the dense sequence), so ``verify`` names the first
row that no longer fits; an anchor (``anchor``) catches truncation and wipes. Appends from all
worker processes are serialised by the database (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL
advisory lock), so the chain stays one line.

Changes write their record in their own transaction to the outbox (``registry_outbox``), which the
writer moves into the chain (``drain_outbox``), whichever process or tool made them. A prediction's
entry (and an access's) is built and appended to the worker's journal (``core.journal``: one
``write()``) before the answer, then queued in a bounded deque (fail closed: a full queue or an
unwritable journal refuses the request; fail open counts and marks the loss); a writer thread
stores batches once a second with the journal's progress, and the next start replays what a killed
worker left. Without a journal (``MEDSERVE_JOURNAL=false``) a prediction's entry is built later, in
slices between requests (``drive``). The writer chains the hashes and inserts a batch as multi-row
``INSERT ... VALUES`` statements (one GIL release and one B-tree pass per 256 rows instead of one
per row, which under load left the writer waiting for the GIL); patients are stored as references
under their own keys (``core.patients``), looked up in the writer's transaction.

Prediction entries are *packed*: the consecutive prediction entries of one prepared slice (up
to ``_SLICE``) are stored as one chained row (action ``predict_batch``, the entries as a JSON
array in ``detail``), so that a prediction costs the writer one small list instead of a hashed,
indexed row (measured: the per-row writer competed with request handling for the GIL and cost
more than the request).
The packed row is hashed like any other, so editing, removing or reordering an entry inside it
breaks the chain at that row; ``entries`` and the export unpack them into one entry each.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from medserve.core import metrics
from medserve.core.crypto import Keyring
from medserve.core.errors import AuditUnavailableError, MedserveError, StoreError
from medserve.core.journal import (
    Journal,
    JournalError,
    Orphan,
    failure_of,
    record_progress,
    replay_orphans,
)
from medserve.core.patients import PatientKeys
from medserve.core.phi import PSEUDONYM_PREFIX as PSEUDONYM
from medserve.core.store.schema import registry_outbox
from medserve.core.store.tables_security import sec_audit
from medserve.core.store.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_BATCH = 2000
_CHUNKS = (256, 128, 64, 32, 16, 8, 4, 2, 1)  # rows per INSERT (15 columns x 256 = 3,840 params)
_SLICE = 512  # queued items prepared on the event loop between requests
_WRITE_INTERVAL_S = 1.0  # see monitoring's flush_interval_s: fewer wakeups, less GIL contention
_ADVISORY_LOCK = 727003
PACKED_ACTION = "predict_batch"
_FIELDS = (
    "actor",
    "key_id",
    "action",
    "model",
    "version",
    "client",
    "outcome",
    "request_id",
    "patient_hash",
    "detail",
)


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    action: str
    outcome: int
    key_id: str | None = None
    model: str | None = None
    version: str | None = None
    client: str | None = None
    request_id: str | None = None
    patient_hash: str | None = None
    detail: str = ""
    at: datetime | None = None
    packed: int = 0  # prediction entries in a packed row (not stored: the detail holds them)
    journal_seq: int = 0  # the newest journal record this entry holds (0: none)
    # a packed row's prediction entries, made its ``detail`` when written (after each patient
    # pseudonym in them is replaced by the patient's reference)
    records: list[list[Any]] | None = field(default=None, compare=False, repr=False)


def _at_text(at: datetime) -> str:
    """UTC, microseconds, ``Z``: the form hashed (isoformat is C-fast; strftime is not)."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at.isoformat(timespec="microseconds") + "Z"


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Sealer = tuple[str, bytes]  # (key id, secret): an audit key that seals rows with an HMAC


def row_hash(row: dict[str, Any], prev_hash: str, sealer: Sealer | None = None) -> str:
    """The chain hash of one row (its sequence, time, every field and the previous hash),
    an HMAC with ``sealer``'s key when the row names one."""
    fields = tuple(row[f] for f in _FIELDS)
    return _hash(row["seq"], _at_text(row["at"]), fields, prev_hash, sealer)


def _hash(
    seq: int, at_text: str, fields: tuple[Any, ...], prev_hash: str, sealer: Sealer | None = None
) -> str:
    if sealer is None:  # a row from before audit keys: plain sha256, anyone can recompute it
        return hashlib.sha256(orjson.dumps([seq, at_text, *fields, prev_hash])).hexdigest()
    key_id, secret = sealer
    payload = orjson.dumps([seq, at_text, *fields, prev_hash, key_id])
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def _anchor_payload(seq: int, digest: str) -> bytes:
    return f"medserve-audit-anchor:{seq}:{digest}".encode()


_PACKED_SPAN = timedelta(minutes=15)  # longest a backlog can hold a prediction entry back


def _packed_entry(records: list[list[Any]], journal_seq: int = 0) -> AuditEntry:
    """The chained row that holds consecutive prediction entries (see the module docstring)."""

    def common(index: int) -> Any:
        values = {r[index] for r in records}
        return values.pop() if len(values) == 1 else None

    first = datetime.fromisoformat(records[0][0].replace("Z", "+00:00"))
    return AuditEntry(
        actor=common(1) or "*",
        key_id=common(2),
        action=PACKED_ACTION,
        model=common(4),
        version=common(5),
        outcome=200,
        at=first,
        packed=len(records),
        records=records,
        journal_seq=journal_seq,
    )


def _entries_in(entry: AuditEntry) -> int:
    return entry.packed if entry.action == PACKED_ACTION else 1


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""
    # entries that record a loss the chain could not avoid (fail open, a damaged journal, a
    # queue overflow): (seq, action, detail). The chain is whole; these say where it is not
    # the whole story.
    gaps: list[tuple[int, str, str]] = field(default_factory=list)


GAP_ACTIONS = frozenset({"audit_gap", "audit_overflow", "journal_skipped", "monitoring.log_gap"})


def _loss_marker(action: str, detail: str, outcome: int = 500) -> AuditEntry:
    """An entry of medserve's own: what the chain could not keep (when, how many, why), or,
    with outcome 200, what it recovered."""
    return AuditEntry(actor="medserve", action=action, outcome=outcome, detail=detail)


_PATIENT = 9  # a packed record's patient field ([at, *_FIELDS])


def _patient_references(conn: Connection, entries: Sequence[AuditEntry]) -> dict[str, str]:
    """Each home-wide patient pseudonym in ``entries`` -> the patient's reference under their
    own key (``core.patients``): what the chain stores, so that erasing the key unlinks it."""
    pseudonyms = {
        e.patient_hash for e in entries if e.patient_hash and e.patient_hash.startswith(PSEUDONYM)
    }
    for e in entries:
        if e.records is not None:
            pseudonyms.update(
                r[_PATIENT] for r in e.records if r[_PATIENT] and r[_PATIENT].startswith(PSEUDONYM)
            )
    return PatientKeys().refs(conn, pseudonyms) if pseudonyms else {}


def _packed_detail(records: list[list[Any]], refs: dict[str, str]) -> str:
    if refs:
        records = [
            [*r[:_PATIENT], refs.get(r[_PATIENT], r[_PATIENT]), *r[_PATIENT + 1 :]]
            if r[_PATIENT]
            else r
            for r in records
        ]
    return orjson.dumps(records).decode()


def _entry_fields(e: AuditEntry) -> list[Any]:
    """An entry's fields as journaled (``_FIELDS`` order)."""
    return [
        e.actor,
        e.key_id,
        e.action,
        e.model,
        e.version,
        e.client,
        e.outcome,
        e.request_id,
        e.patient_hash,
        e.detail,
    ]


def _entry_from_record(record: list[Any]) -> AuditEntry:
    """An entry from its journal record (``[at, *fields]``)."""
    at = datetime.fromisoformat(record[0].replace("Z", "+00:00"))
    fields = dict(zip(_FIELDS, record[1:], strict=True))
    return AuditEntry(at=at, **fields)


def _outbox_entry(row: Any) -> AuditEntry:
    """The audit entry of one registry or governance change (``registry.alias_set``,
    ``governance.card_edited``, ...; alias moves name where from and to, and why)."""
    detail: dict[str, Any] = {}
    if row["alias"] is not None:
        detail = {"alias": row["alias"], "from": row["from_version"], "to": row["version"]}
    if row["reason"]:
        detail["reason"] = row["reason"]
    return AuditEntry(
        actor=row["actor"],
        action=row["kind"],
        outcome=200,
        model=row["model_name"],
        version=str(row["version"]) if row["version"] is not None else None,
        detail=orjson.dumps(detail).decode() if detail else "",
        at=_as_utc(row["at"]),
    )


class AuditKeyError(MedserveError):
    code = "audit_key"


AUDIT_KEYS_VAR = "MEDSERVE_AUDIT_KEYS"
AUDIT_KEYS_FILE = "audit_keys.json"


def load_audit_keys(home: Path) -> Keyring:
    """The audit keyring: ``MEDSERVE_AUDIT_KEYS`` (the JSON of ``medserve.core.crypto``), else
    ``home/keys/audit_keys.json`` (mode 0600, created on first use). Keep it off the database
    host's reach where you can: whoever holds it can reseal a rewritten trail."""
    return Keyring.load(home, env_var=AUDIT_KEYS_VAR, file_name=AUDIT_KEYS_FILE)


class AuditLog:
    """The trail of one database. With ``keys`` (the home's audit keyring: ``keys/audit_keys.json``
    or ``MEDSERVE_AUDIT_KEYS``, kept outside the database) every row is sealed with an HMAC of
    the primary key and names it, so a person who can write the database but not read the key
    cannot rewrite rows and recompute the chain; without keys rows are plain sha256 (tests, and
    trails from before keys)."""

    def __init__(
        self,
        engine: Engine,
        *,
        queue_size: int = 200_000,
        keys: Keyring | None = None,
        journal: Journal | None = None,
        fail_open: bool = False,
    ) -> None:
        self.engine = engine
        self.keys = keys
        self.journal = journal
        self.fail_open = fail_open
        self._store_failure: str | None = None  # why the store cannot be written (None: it can)
        self._orphans = journal is not None  # stopped workers' journals may wait for replay
        self._unwritable = 0  # entries lost to an error that was not the store's: marked
        self._unjournaled = 0  # fail open: entries answered before they could be journaled
        self.uow = UnitOfWork(engine, "audit")
        self._queue: deque[Any] = deque()  # AuditEntry or (build, argument, unix time)
        self._queue_size = queue_size
        self._stop = threading.Event()
        self._dropped = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._second = -1
        self._second_text = ""
        self._ready: deque[AuditEntry] = deque()  # prepared, to chain
        self._prepare_lock = threading.Lock()
        # entries in _ready: two counters, each written by one thread (no lock on the hot path)
        self._prepared = 0
        self._written = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # set by drive()

    # -- writing ----------------------------------------------------------------------------
    def _append(self, conn: Connection, entries: Sequence[AuditEntry]) -> None:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK})")
        t = sec_audit
        last = conn.execute(
            sa.select(t.c.seq, t.c.hash, t.c.chain_key).order_by(t.c.seq.desc()).limit(1)
        ).first()
        seq, prev = (int(last[0]), str(last[1])) if last is not None else (0, GENESIS)
        sealer = self._sealer()
        if sealer is None and last is not None and last[2] is not None:
            # an unsealed row after sealed ones would read as tampering: refuse, loudly
            raise AuditKeyError("this audit trail is sealed: append with its keys (the home's)")
        key_id = sealer[0] if sealer is not None else None
        refs = _patient_references(conn, entries)
        now = datetime.now(UTC)
        sqlite = conn.dialect.name == "sqlite"
        rows: list[tuple[Any, ...]] = []
        for e in entries:
            seq += 1
            at = (e.at or now).astimezone(UTC).replace(tzinfo=None)
            at_text = _at_text(at)
            fields = (
                e.actor[:256],
                e.key_id,
                e.action[:64],
                e.model[:128] if e.model else None,
                e.version[:64] if e.version else None,
                e.client[:64] if e.client else None,
                int(e.outcome),
                e.request_id[:64] if e.request_id else None,
                refs.get(e.patient_hash, e.patient_hash) if e.patient_hash else None,
                e.detail if e.records is None else _packed_detail(e.records, refs),
            )
            digest = _hash(seq, at_text, fields, prev, sealer)
            # SQLite keeps DateTime as SQLAlchemy's text form; the driver-level insert below
            # skips SQLAlchemy's per-value processing (the cost of a batch is in that loop).
            stored_at: Any = at_text[:-1].replace("T", " ") if sqlite else at.replace(tzinfo=UTC)
            rows.append((seq, stored_at, *fields, prev, digest, key_id))
            prev = digest
        marks = "(" + ", ".join(["?" if conn.dialect.paramstyle == "qmark" else "%s"] * 15) + ")"
        columns = ", ".join(["seq", "at", *_FIELDS, "prev_hash", "hash", "chain_key"])
        start = 0
        for size in _CHUNKS:
            while len(rows) - start >= size:
                flat = tuple([value for row in rows[start : start + size] for value in row])
                sql = f"INSERT INTO sec_audit ({columns}) VALUES {', '.join([marks] * size)}"
                conn.exec_driver_sql(sql, flat)
                start += size

    def _sealer(self) -> Sealer | None:
        if self.keys is None:
            return None
        return self.keys.primary, self.keys.keys[self.keys.primary]

    def seal(self) -> None:
        """Make sure the chain's newest row is sealed with the primary key: a server or the CLI
        calls this on start, so a trail from before keys (or a key rotation) is marked, and a
        trail rewritten without the key can no longer pass as one that never had a key."""
        if self.keys is None:
            return
        with self.uow.read() as conn:
            last = conn.execute(
                sa.select(sec_audit.c.chain_key).order_by(sec_audit.c.seq.desc()).limit(1)
            ).first()
        if last is None or last[0] != self.keys.primary:
            marker = AuditEntry(
                actor="medserve",
                action="audit_key_in_use",
                outcome=200,
                detail=f"rows from here are sealed with audit key {self.keys.primary}",
            )
            self.append([marker])

    def anchor(self) -> dict[str, Any]:
        """The newest row's sequence and hash, sealed with the primary key: kept on write-once
        storage, it lets ``verify`` detect a truncated or wiped trail."""
        if self.keys is None:
            raise AuditKeyError("an anchor needs the audit keys (MEDSERVE_AUDIT_KEYS or the home)")
        with self.uow.read() as conn:
            last = conn.execute(
                sa.select(sec_audit.c.seq, sec_audit.c.hash, sec_audit.c.at)
                .order_by(sec_audit.c.seq.desc())
                .limit(1)
            ).first()
        if last is None:
            raise AuditKeyError("the audit trail is empty: nothing to anchor")
        seq, digest, at = int(last[0]), str(last[1]), _as_utc(last[2])
        key = self.keys.keys[self.keys.primary]
        mac = hmac.new(key, _anchor_payload(seq, digest), hashlib.sha256).hexdigest()
        stamp = _at_text(at) if at is not None else None
        return {"seq": seq, "hash": digest, "at": stamp, "key": self.keys.primary, "mac": mac}

    def append_in(self, conn: Connection, entries: list[AuditEntry]) -> None:
        """Append inside the caller's write transaction: the change and its audit entry
        commit together (or not at all)."""
        if entries:
            self._append(conn, entries)

    def drain_outbox(self, most: int = _BATCH) -> int:
        """Move registry changes from the outbox into the chain (oldest first), deleting them in
        the same transaction: each change is audited exactly once, even across a crash."""
        t = registry_outbox
        with self.uow.write() as conn:
            rows = conn.execute(sa.select(t).order_by(t.c.seq).limit(most)).mappings().all()
            if not rows:
                return 0
            self._append(conn, [_outbox_entry(row) for row in rows])
            conn.execute(t.delete().where(t.c.seq <= rows[-1]["seq"]))
        return len(rows)

    def append(self, entries: Sequence[AuditEntry]) -> None:
        """Write ``entries`` durably now (committed when this returns), and, in the same
        transaction, how far the worker's journal is stored (the newest record they hold)."""
        if not entries:
            return
        upto = max(e.journal_seq for e in entries)
        with self.uow.write() as conn:
            self._append(conn, entries)
            if upto and self.journal is not None:
                record_progress(conn, "audit", self.journal.id, upto)
        if upto and self.journal is not None:
            self.journal.stored(upto)

    def replay(self) -> int:
        """Store what stopped workers left in their journals (see ``core.journal``); each
        journal's entries are chained after a marker naming the worker and the count, and a
        journal found damaged leaves an ``audit_gap`` marker with the bytes lost."""
        if self.journal is None:
            return 0
        directory = self.journal.dir.parent
        replayed = replay_orphans(directory, "audit", self.engine, self._apply_orphan)
        if replayed:
            metrics.JOURNAL_REPLAYED.labels("audit").inc(replayed)
        return replayed

    def _apply_orphan(self, conn: Connection, orphan: Orphan) -> None:
        entries: list[AuditEntry] = [
            _loss_marker(
                "audit_replayed",
                f"{len(orphan.records)} entries recovered from the journal of stopped worker "
                f"{orphan.journal}",
                outcome=200,
            )
        ]
        records: list[list[Any]] = []
        for _, payload in orphan.records:
            record = orjson.loads(payload)
            if record[0] == "p":
                records.append(record[1:])
                if len(records) == _SLICE:
                    entries.append(_packed_entry(records))
                    records = []
                continue
            if records:
                entries.append(_packed_entry(records))
                records = []
            entries.append(_entry_from_record(record[1:]))
        if records:
            entries.append(_packed_entry(records))
        if orphan.corrupt_bytes:
            detail = (
                f"the journal of stopped worker {orphan.journal} held {orphan.corrupt_bytes} "
                "unreadable bytes (a torn or damaged record): entries may be missing there"
            )
            entries.append(_loss_marker("audit_gap", detail))
        self._append(conn, entries)

    def _room(self) -> bool:
        """Whether the queue can take one more entry; when it cannot, fail closed refuses the
        request (503) and fail open counts the loss (marked in the chain by the writer)."""
        if len(self._queue) + self._prepared - self._written < self._queue_size:
            return True
        if not self.fail_open:
            raise AuditUnavailableError(
                "the audit trail is behind (its queue is full): retry shortly"
            )
        self._dropped += 1
        metrics.AUDIT_UNRECORDED.labels("audit", "queue_full").inc()
        return False

    def _journaled(self, record: list[Any]) -> int:
        """Journal ``record`` before its request is answered; 0 where there is no journal or,
        fail open, it could not be written (counted)."""
        journal = self.journal
        if journal is None:
            return 0
        try:
            return journal.append(orjson.dumps(record))
        except JournalError:
            if not self.fail_open:
                raise
            metrics.JOURNAL_UNWRITTEN.labels("audit").inc()
            self._unjournaled += 1
            return 0

    def enqueue(self, entry: AuditEntry) -> None:
        """Queue an entry for the background writer (journaled first); never blocks."""
        if not self._room():
            return
        if self.journal is not None:
            at = entry.at or datetime.now(UTC)
            record = ["e", _at_text(at), *_entry_fields(entry)]
            entry = replace(entry, at=at, journal_seq=self._journaled(record))
        self._queue.append(entry)

    def enqueue_packed(self, build: Callable[[Any, str], list[Any]], argument: Any) -> None:
        """Queue a prediction entry to be packed with its neighbours into one chained row:
        ``build(argument, at_text)`` returns ``[at, actor, key_id, action, model, version,
        client, outcome, request_id, patient_hash, detail]``. Without a journal it runs later
        (``drive``); with one it runs now and the record is journaled before the answer."""
        if not self._room():
            return
        now = time.time()
        if self.journal is None:
            self._queue.append((build, argument, now, 0))
            return
        record = build(argument, self._at_text_of(now))
        seq = self._journaled(["p", *record])
        self._queue.append((None, record, now, seq))

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="medserve-audit-writer", daemon=True
            )
            self._thread.start()

    def drive(self, loop: asyncio.AbstractEventLoop) -> None:
        """Build queued prediction entries on ``loop`` (the server's event loop; call from it)
        in slices between requests; the writer thread then only chains and inserts. Same
        reason as the prediction log's ``drive``: Python work in the writer thread competes
        with the event loop for the GIL and stalls it at every system call."""
        self._loop = loop
        loop.call_later(_WRITE_INTERVAL_S, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        if self._stop.is_set():
            return
        try:
            self._prepare(_SLICE)
        except (
            Exception
        ) as exc:  # keep ticking: the next slices, and the overflow count, still matter
            log.error("audit trail: could not prepare queued entries: %s", type(exc).__name__)
        if self._queue:
            self._loop.call_soon(self._tick)
        else:
            self._loop.call_later(_WRITE_INTERVAL_S, self._tick)

    def _prepare(self, most: int | None = None) -> None:
        """Queued items -> entries ready to chain, in order: an ``AuditEntry`` stays a row of
        its own, consecutive prediction entries become one packed entry (its JSON is made by the
        writer, once each patient pseudonym in it is replaced by the patient's reference)."""
        with self._prepare_lock:  # the loop's slices, or the writer when it stops
            queue = self._queue
            taken = 0
            units: list[AuditEntry] = []
            records: list[list[Any]] = []
            newest = 0  # the newest journal record in ``records``
            while queue and (most is None or taken < most):
                item = queue.popleft()
                taken += 1
                if type(item) is tuple:
                    records.append(self._packed(item))
                    newest = item[3] or newest
                    continue
                if records:
                    units.append(_packed_entry(records, newest))
                    records = []
                units.append(item)
            if records:
                units.append(_packed_entry(records, newest))
            self._ready.extend(units)
            self._prepared += taken

    @property
    def failure(self) -> str | None:
        """Why the trail cannot be written now (see ``core.journal.failure_of``), or None."""
        return failure_of(self.journal, self._store_failure)

    def _replay_quietly(self) -> None:
        """Replay stopped workers' journals; on failure (the store is down) try again at the
        next interval: the journals stay on disk until they are stored."""
        try:
            self.replay()
        except Exception as exc:
            log.error("audit trail: could not replay journals yet: %s", type(exc).__name__)
            self._store_failure = f"the audit trail cannot be written ({type(exc).__name__})"
        else:
            self._orphans = False

    def _run(self) -> None:
        while True:
            if self._orphans:
                self._replay_quietly()
            stopping = self._stop.wait(_WRITE_INTERVAL_S)
            if self.journal is not None and self.journal.failure is not None:
                self.journal.probe()  # room on the disk again: serving resumes
            if stopping or self._loop is None:
                self._prepare()
            while self._ready or self._dropped or self._unwritable or self._unjournaled:
                batch: list[AuditEntry] = []
                taken = 0
                while self._ready and len(batch) < _BATCH:
                    entry = self._ready.popleft()
                    batch.append(entry)
                    taken += _entries_in(entry)
                self._written += taken
                if self._dropped:
                    lost, self._dropped = self._dropped, 0
                    detail = (
                        f"{lost} audit entries of answered requests were lost by worker "
                        f"{os.getpid()} (fail_open: the queue was full)"
                    )
                    batch.append(_loss_marker("audit_overflow", detail))
                if self._unjournaled:
                    count, self._unjournaled = self._unjournaled, 0
                    detail = (
                        f"{count} audit entries of worker {os.getpid()} were answered before "
                        "they could be journaled (fail_open: the journal's disk was full or "
                        "unwritable); they are stored, but a crash then would have lost them"
                    )
                    batch.append(_loss_marker("journal_skipped", detail))
                if self._unwritable:
                    lost, self._unwritable = self._unwritable, 0
                    detail = (
                        f"{lost} audit entries were lost by worker {os.getpid()}: "
                        "they could not be written"
                    )
                    batch.append(_loss_marker("audit_gap", detail))
                if not self._write_batch(batch):
                    # kept, oldest first, for the next interval: nothing already answered is
                    # lost while the store is down (the queue stays bounded: new entries beyond
                    # it are counted and marked as lost)
                    self._ready.extendleft(reversed(batch))
                    self._written -= taken
                    if stopping:
                        log.error("audit trail: %d entries unwritten at shutdown", len(self._ready))
                        return  # the store is down at shutdown: nothing more can be done
                    break
                if stopping:
                    self._prepare()
            self._drain_quietly()
            if stopping and not self._queue:
                return

    def _drain_quietly(self) -> None:
        """The writer's turn at the outbox: a failure is logged and the rows wait (they are in
        the database, so nothing is lost; the next interval tries again)."""
        try:
            while self.drain_outbox() == _BATCH:
                pass
        except Exception as exc:
            log.error(
                "audit trail: could not move registry changes from the outbox: %s",
                type(exc).__name__,
            )

    def _at_text_of(self, at: float) -> str:
        """``_at_text`` of a unix time, the date and time of day formatted once a second (a
        datetime per entry cost the writer more than the rest of the entry)."""
        second = int(at)
        if second != self._second:
            self._second = second
            self._second_text = _at_text(datetime.fromtimestamp(second, UTC))[:19]
        return f"{self._second_text}.{int((at - second) * 1e6):06d}Z"

    def _packed(self, item: tuple[Any, ...]) -> list[Any]:
        build, argument, at, _ = item
        if build is None:  # built (and journaled) when it was queued
            return cast("list[Any]", argument)
        at_text = self._at_text_of(at)
        try:
            record: list[Any] = build(argument, at_text)
        except Exception as exc:  # a bug must not cost the entry its place in the chain
            log.error(
                "audit trail: could not build a queued prediction entry: %s", type(exc).__name__
            )
            record = [
                at_text,
                "medserve",
                None,
                "audit_error",
                None,
                None,
                None,
                500,
                None,
                None,
                "entry lost",
            ]
        return record

    def _write_batch(self, batch: list[AuditEntry]) -> bool:
        """Write ``batch``; on a store error retry a few times, then report the trail failing
        (``failure``) and return False so the caller keeps the batch."""
        for attempt in range(3):
            try:
                self.append(batch)
            except (OperationalError, StoreError) as exc:  # down, locked or full: keep the batch
                cause = exc.orig if isinstance(exc, OperationalError) else exc.__cause__
                reason = f"the audit trail cannot be written ({type(cause or exc).__name__})"
                if attempt == 2:  # the type only: a driver's message may quote the values
                    log.error("audit trail: could not write %d entries: %s", len(batch), reason)
                    self._store_failure = reason
                    return False
                time.sleep(0.1 * (attempt + 1))
            except Exception as exc:  # not the store: a bug; the entries cannot be kept
                log.error(
                    "audit trail: could not write %d entries: %s", len(batch), type(exc).__name__
                )
                lost = sum(_entries_in(e) for e in batch)
                self._unwritable += lost
                metrics.AUDIT_UNRECORDED.labels("audit", "write_failed").inc(lost)
                return True
            else:
                self._store_failure = None
                return True
        return False

    def flush(self) -> None:
        """Write everything queued so far (stops and restarts the writer)."""
        self._stop_writer()
        self.start()

    def _stop_writer(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._stop.set()
                thread.join()

    def close(self) -> None:
        """Drain the queue to the database and stop the writer; the journal is removed when
        everything in it was stored, else kept for the next start to replay."""
        self._stop_writer()
        if self.journal is not None:
            complete = not (self._queue or self._ready)
            self.journal.close(complete=complete)

    # -- reading ----------------------------------------------------------------------------
    def verify(self, anchor: dict[str, Any] | None = None) -> VerifyResult:
        """Walk the chain: dense sequence, each row linked to the one before, each hash right.
        With keys, a sealed row is checked with the key it names, and once the chain holds a
        sealed row no row after it may be unsealed; a trail that holds rows but no sealed one,
        although keys exist, was rewritten without them. With ``anchor`` (from :meth:`anchor`),
        the anchored row must still be there, unchanged: a truncated or wiped trail fails."""
        prev = GENESIS
        expected_seq = 1
        checked = 0
        sealed_from: int | None = None
        anchored: str | None = None
        gaps: list[tuple[int, str, str]] = []
        if anchor is not None:
            self._check_anchor(anchor)
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True).execute(
                sa.select(sec_audit).order_by(sec_audit.c.seq)
            )
            for raw in result.mappings():
                row = dict(raw)
                seq = int(row["seq"])
                if seq != expected_seq:
                    return VerifyResult(
                        False, checked, expected_seq, f"entry {expected_seq} is missing"
                    )
                if row["prev_hash"] != prev:
                    return VerifyResult(
                        False,
                        checked,
                        seq,
                        f"entry {seq} does not follow entry {seq - 1} "
                        "(an entry was removed or reordered)",
                    )
                key_id = row.get("chain_key")
                sealer: Sealer | None = None
                if key_id is not None:
                    secret = self.keys.keys.get(key_id) if self.keys is not None else None
                    if secret is None:
                        reason = f"entry {seq} is sealed with audit key {key_id}, not held here"
                        return VerifyResult(False, checked, seq, reason)
                    sealer = (key_id, secret)
                    sealed_from = seq if sealed_from is None else sealed_from
                elif sealed_from is not None and self.keys is not None:
                    reason = f"entry {seq} is not sealed although entry {sealed_from} was"
                    return VerifyResult(False, checked, seq, reason)
                if row_hash(row, prev, sealer) != row["hash"]:
                    return VerifyResult(False, checked, seq, f"entry {seq} was modified")
                if row["action"] in GAP_ACTIONS:
                    gaps.append((seq, str(row["action"]), str(row["detail"] or "")))
                if anchor is not None and seq == anchor["seq"]:
                    anchored = row["hash"]
                prev = row["hash"]
                expected_seq += 1
                checked += 1
        if self.keys is not None and checked and sealed_from is None:
            reason = "no entry is sealed with an audit key although keys exist: rewritten?"
            return VerifyResult(False, checked, 1, reason)
        if anchor is not None:
            if anchored is None:
                reason = f"the trail ends before the anchored entry {anchor['seq']} (truncated)"
                return VerifyResult(False, checked, int(anchor["seq"]), reason)
            if anchored != anchor["hash"]:
                reason = f"entry {anchor['seq']} is not the one anchored"
                return VerifyResult(False, checked, int(anchor["seq"]), reason)
        return VerifyResult(True, checked, gaps=gaps)

    def _check_anchor(self, anchor: dict[str, Any]) -> None:
        secret = self.keys.keys.get(str(anchor.get("key"))) if self.keys is not None else None
        if secret is None:
            raise AuditKeyError(f"the anchor is sealed with audit key {anchor.get('key')!r}")
        try:
            expected = hmac.new(
                secret, _anchor_payload(int(anchor["seq"]), str(anchor["hash"])), hashlib.sha256
            ).hexdigest()
        except (KeyError, TypeError, ValueError) as exc:
            raise AuditKeyError("not a medserve audit anchor") from exc
        if not hmac.compare_digest(expected, str(anchor.get("mac", ""))):
            raise AuditKeyError("the anchor's seal does not match: it was altered")

    def entries(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        after_seq: int = 0,
        actor: str | None = None,
        model: str | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        query = sa.select(sec_audit).where(sec_audit.c.seq > after_seq).order_by(sec_audit.c.seq)
        since, until = _as_utc(since), _as_utc(until)
        packed = sec_audit.c.action == PACKED_ACTION
        if since is not None:
            # a packed row is stamped with its first entry; later entries may fall after since
            early = since - _PACKED_SPAN
            query = query.where(sa.or_(sec_audit.c.at >= since, packed & (sec_audit.c.at >= early)))
        if until is not None:
            query = query.where(sec_audit.c.at < until)
        if actor:
            query = query.where(sa.or_(packed, sec_audit.c.actor == actor))
        if model:
            query = query.where(sa.or_(packed, sec_audit.c.model == model))
        emitted = 0
        with self.engine.connect() as conn:
            for raw in conn.execute(query).mappings():
                if limit is not None and emitted >= limit:
                    return
                row = {str(k): v for k, v in raw.items()}  # plain str keys for JSON encoders
                row["at"] = _at_text(row["at"])
                if row["action"] != PACKED_ACTION:
                    emitted += 1
                    yield row
                    continue
                # a packed row is emitted whole (paging by seq stays exact), each entry with
                # the row's seq and its index in it
                for index, values in enumerate(orjson.loads(row["detail"])):
                    entry = dict(zip(("at", *_FIELDS), values, strict=True))
                    if (actor and entry["actor"] != actor) or (model and entry["model"] != model):
                        continue
                    at = datetime.fromisoformat(entry["at"].replace("Z", "+00:00"))
                    if (since is not None and at < since) or (until is not None and at >= until):
                        continue
                    emitted += 1
                    yield {"seq": row["seq"], "index": index, **entry}

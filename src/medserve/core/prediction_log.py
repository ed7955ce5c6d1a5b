"""The prediction log: every prediction recorded, de-identified, off the hot path.

``on_prediction`` runs on the event loop for every request: it de-identifies the prediction
into one record (``record``), appends it to the worker's journal (``core.journal``: one
``write()``, so a killed worker loses nothing it answered) and to a bounded deque. Every
``flush_interval_s`` (1 s, or when the queue passes half full) the queued records are grouped
and encoded (*packed*), and a writer thread per worker process inserts the packs, with the
journal's progress, in one transaction. In the
server the packing runs on the event loop in slices between requests (``drive``); elsewhere the
writer thread packs too. ``close()`` drains everything that was accepted: the server calls it on
shutdown (SIGTERM included), so entries are not lost.

Why it is shaped this way: the writer shares the GIL (and, under load, the CPU) with the event
loop, so what logging costs per prediction is taken from the requests. An indexed SQL row per
prediction (JSON per row, four B-tree inserts) made the writer threads use 39-84 µs of CPU per
request in the server and stalled the event loop at GIL hand-offs: 20-30% of single-row
throughput. So the log is packed: the predictions of one batch and model version become one row
whose columns are JSON arrays (ids, times, outputs by column, encoded by orjson from numpy in a
few calls) and one input matrix (``.npy`` bytes where it is all numbers), and the writer threads
use 4-11 µs per request (both measured with ``python -m benchmarks.governance --cpu``).

Outcomes find their rows through the ids: medserve's request ids start with their time in
microseconds, so the batches that can hold one are an index range; a caller's own
``X-Request-ID`` is written to ``mon_prediction_ids`` instead (see ``MonitoringStore``).

When the writer cannot keep up the queue fills, and ``audit_failure`` decides (never by waiting:
``on_prediction`` runs on the event loop). ``fail_closed`` (the default) refuses the prediction:
``on_prediction`` raises ``PredictionLogFullError`` (a 503 with code ``prediction_log_full``)
before the response is sent, so the caller is never answered with a prediction that was not
logged (back-pressure). ``fail_open`` answers it and drops its rows, each counted in
``medserve_monitor_log_dropped_total`` and logged (no PHI).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sized
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import orjson
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from medserve.core import metrics
from medserve.core.context import (
    RequestContext,
    now_us,
    request_id_time_us,
    stored_request_id,
)
from medserve.core.errors import StoreError
from medserve.core.events import PredictionEvent, RefusalEvent
from medserve.core.journal import (
    Journal,
    JournalError,
    Orphan,
    failure_of,
    record_progress,
    replay_orphans,
)
from medserve.core.monitoring_config import MonitoringSettings
from medserve.core.phi import deidentify_text, pseudonymize
from medserve.core.registry.signature import Signature, imputed_counts
from medserve.core.store.outbox import record_change
from medserve.core.store.tables_monitoring import (
    PACKED_SPAN_S,
    mon_prediction_batches,
    mon_prediction_ids,
)

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_WRITE_ATTEMPTS = 5
_SLICE_ROWS = 256  # rows packed on the event loop between requests (1-3 ms)
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_NUMERIC_KINDS = frozenset("fiub")
# How long after its request id was made a prediction may be logged and still be found by the
# time in its id (clock noise .. 15 minutes); others are written to mon_prediction_ids.
OWN_ID_LAG_US = (-1_000_000, 900_000_000)


class PredictionLogFullError(StoreError):
    """The prediction log's queue is full and ``audit_failure`` is ``fail_closed``: the
    prediction is refused rather than answered unlogged (a ``StoreError``: 503)."""

    code = "prediction_log_full"


def _json_default(value: Any) -> Any:
    """What orjson does not take natively: non-contiguous or object/str numpy arrays."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default, option=_JSON_OPTIONS)


def carries_time(request_id: str, at_us: int, made_us: int | None = None) -> bool:
    """Whether ``request_id`` is medserve's own, made shortly before ``at_us`` (``made_us``: its
    time where the request context knows it, else read from the id)."""
    made = request_id_time_us(request_id) if made_us is None else made_us
    return made is not None and OWN_ID_LAG_US[0] <= at_us - made <= OWN_ID_LAG_US[1]


SignatureLookup = Callable[[str, int], Signature | None]
# One prediction as logged, de-identified (what the journal holds and packs are made of):
# [model, version, request id as stored, its time (µs) where medserve made it, log time (µs),
#  patient pseudonym, site, latency (ms), input rows as encoded, outputs, rows,
#  values imputed per feature or None (absent from records journaled before it was added)]
LogRecord = list[Any]
Pack = tuple[dict[str, Any], set[str]]  # a mon_prediction_batches row and the ids to index
Bundle = tuple[list[Pack], int, int]  # the packs of one queue slice, their rows, newest record
# One version's input matrix -> its de-identified rows: the matrix itself where nothing needs
# cleaning (orjson encodes a numeric matrix natively), else one list of values per row.
RowEncoder = Callable[[np.ndarray], "np.ndarray | list[list[Any]]"]


def _as_is(X: np.ndarray) -> np.ndarray:
    return X


def make_row_encoder(
    signature: Signature | None, salt: bytes, *, keep_text: bool = False
) -> RowEncoder:
    """How one version's input rows become de-identified JSON (feature order of the signature).

    Numbers are kept (drift needs them) and so are values of declared categories; identifier
    fields become salted pseudonyms. Free text (a string field without categories) is kept only
    as a keyed hash and its length (``txt_<hash>/<length>``): de-identification misses names it
    was never shown, so the default keeps none of the text. A model's monitoring config can opt
    in (``log_text``) to Safe Harbor de-identified text instead. An all-numeric signature without
    identifiers costs nothing per value: its rows are logged as they are.
    """
    if signature is None:
        return _as_is
    identifiers = {i for i, f in enumerate(signature.inputs) if f.identifier}
    if not identifiers and signature.all_numeric:
        return _as_is
    categorical = {i for i, f in enumerate(signature.inputs) if f.categories}

    def clean(index: int, value: Any) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or (isinstance(value, float) and value != value):
            return None
        if index in identifiers:
            return pseudonymize(str(value), salt=salt)
        if isinstance(value, str) and index not in categorical:
            return deidentify_text(value) if keep_text else text_token(value, salt)
        return value

    def encode(X: np.ndarray) -> list[list[Any]]:
        return [[clean(i, v) for i, v in enumerate(row)] for row in X]

    return encode


def text_token(text: str, salt: bytes) -> str:
    """What the log keeps of free text by default: a keyed hash (equal notes link, nothing can
    be read back) and the length."""
    digest = hmac.new(salt, text.encode("utf-8"), hashlib.sha256).hexdigest()[:16]
    return f"txt_{digest}/{len(text)}"


def _stack(parts: list[Any]) -> Any:
    """Rows of several requests as one JSON-able value: one numeric matrix where they all are
    numeric arrays of one width (encoded natively by orjson), else a list."""
    if all(type(p) is np.ndarray for p in parts):
        try:
            stacked = parts[0] if len(parts) == 1 else np.concatenate(parts)
        except ValueError:
            pass
        else:
            if stacked.dtype.kind in _NUMERIC_KINDS:
                return np.ascontiguousarray(stacked)
    out: list[Any] = []
    for part in parts:
        out.extend(part.tolist() if isinstance(part, np.ndarray) else part)
    return out


def output_columns(outputs: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """``{output: value per row}`` for the requests of one batch (``sizes``: rows of each); an
    output a request lacks, or that is not one value per row, is ``null`` for its rows."""
    keys = dict.fromkeys(outputs[0])  # a version's outputs are the same for every request
    if len(set().union(*outputs)) != len(keys):
        for out in outputs:
            keys.update(dict.fromkeys(out))
    columns: dict[str, Any] = {}
    for key in keys:
        parts = [out.get(key) for out in outputs]
        try:  # the usual case: every request has it, one value per row (len() of None raises)
            usual = list(map(len, cast("list[Sized]", parts))) == sizes
        except TypeError:
            usual = False
        if usual:
            columns[key] = _stack(parts)
            continue
        column: list[Any] = []
        for value, n in zip(parts, sizes, strict=True):
            array = value if isinstance(value, np.ndarray) or value is None else np.asarray(value)
            if array is None or not array.ndim or array.shape[0] != n:
                column.append([None] * n)
            else:
                column.append(array)
        columns[key] = _stack(column)
    return columns


def npy_bytes(matrix: np.ndarray) -> bytes:
    """``matrix`` in NumPy's ``.npy`` format (dtype and shape in its header; read back with
    ``np.load(..., allow_pickle=False)``)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, matrix, allow_pickle=False)
    return buffer.getvalue()


def npy_rows(blob: bytes) -> list[list[Any]]:
    """Rows of a matrix stored by :func:`npy_bytes`, each value as JSON logging would have given
    it (float32 values by their shortest float32 text: 0.1, not 0.10000000149011612)."""
    matrix = np.load(io.BytesIO(blob), allow_pickle=False)
    rows: list[list[Any]] = orjson.loads(orjson.dumps(matrix, option=_JSON_OPTIONS))
    return rows


class PredictionLog:
    """A ``PredictionObserver`` writing to ``mon_prediction_batches`` through its own thread."""

    def __init__(
        self,
        engine: Engine,
        settings: MonitoringSettings,
        *,
        salt: bytes,
        signature_of: SignatureLookup,
        keep_text_of: Callable[[str], bool] | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.engine = engine
        self.journal = journal
        self._orphans = journal is not None  # stopped workers' journals may wait for replay
        self.settings = settings
        self.salt = salt
        self.signature_of = signature_of
        self.keep_text_of = keep_text_of
        self._queue: deque[tuple[LogRecord, int]] = deque()  # (record, journal seq or 0)
        self._max = max(1, settings.queue_size)
        self._soon = max(1, self._max // 2)
        self._fail_open = settings.audit_failure == "fail_open"
        self._interval_s = max(0.001, settings.flush_interval_s)
        self._wake = threading.Event()  # the writer: write now (queue half full, flush, close)
        self._stop = False
        self._busy = False  # the writer holds popped events not yet written
        self._sites = frozenset(settings.sites)
        self._store_failure: str | None = None  # why the store cannot be written (None: it can)
        # The bound counts rows (a 100-row request is 100 rows): two counters, each written
        # by one thread only (the event loop / the writer), so no lock on the hot path.
        self._in_rows = 0
        self._out_rows = 0
        self._encoders: dict[tuple[str, int], RowEncoder] = {}
        self._patients: dict[str, str] = {}
        self._ready: deque[Bundle] = deque()  # packed, to insert
        self._loop: asyncio.AbstractEventLoop | None = None  # set by drive()
        self._tick_later: asyncio.TimerHandle | None = None
        self._pack_here = False  # flush(): the writer packs too
        self._thread = threading.Thread(target=self._run, name="medserve-prediction-log")
        self._thread.daemon = True
        self._closed = False
        self.written = 0
        self.dropped = 0
        self.refused = 0  # rows of predictions refused (fail_closed) because the queue was full
        self._thread.start()

    # -- hot path ---------------------------------------------------------------------------
    def on_refusal(self, event: RefusalEvent) -> None:
        """Nothing refused is logged: the log holds predictions that were answered."""

    @property
    def failure(self) -> str | None:
        """Why the log cannot be written now (see ``core.journal.failure_of``), or None."""
        return failure_of(self.journal, self._store_failure)

    def on_prediction(self, event: PredictionEvent) -> None:
        rows = event.inputs.shape[0]
        queued = self._in_rows - self._out_rows
        if queued >= self._max:
            self._full(rows)
            return
        record = self.record(event, now_us())
        seq = 0
        if self.journal is not None:  # durable before the answer is sent
            try:
                seq = self.journal.append(dumps(record))
            except JournalError:
                if not self._fail_open:
                    raise
                metrics.JOURNAL_UNWRITTEN.labels("log").inc()
        self._queue.append((record, seq))
        self._in_rows += rows
        if queued < self._soon <= queued + rows:
            self._hurry()

    def record(self, event: PredictionEvent, at_us: int) -> LogRecord:
        """One prediction as logged: de-identified here, before it is journaled or queued."""
        context = event.context
        patient = context.patient_id
        site = context.site
        return [
            event.model,
            event.version,
            stored_request_id(context.request_id, context.id_time_us, self.salt),
            context.id_time_us,
            at_us,
            self._patients_of(context, event.inputs.shape[0])
            or (self._patient(patient) if patient else None),
            self._site(site) if site else None,
            event.latency_s * 1000.0,
            self._encoder(event.model, event.version)(event.inputs),
            event.outputs,
            event.inputs.shape[0],
            imputed_counts(event.inputs),  # what arrived missing (inputs hold imputed values)
        ]

    def _hurry(self) -> None:
        """The queue passed half full: pack (driven) or write (not driven) now."""
        if self._loop is None:
            self._wake.set()
        elif self._tick_later is not None:
            self._tick_later.cancel()
            self._tick_later = None
            self._loop.call_soon(self._tick)

    def _full(self, rows: int) -> None:
        """No room: never wait here (this is the event loop); refuse or drop at once."""
        if self._loop is not None:  # the writer can only free room by writing packs
            self._pack_pending()
        self._wake.set()
        if self._fail_open:
            self._drop(rows, "queue_full")
            return
        self.refused += rows
        log.warning("prediction log full: refused a prediction of %d row(s) (fail_closed)", rows)
        raise PredictionLogFullError(
            "the prediction log is full (its writer is behind), and predictions are not "
            "answered unlogged: retry shortly"
        )

    def _drop(self, rows: int, reason: str) -> None:
        self.dropped += rows
        metrics.LOG_DROPPED.labels(reason).inc(rows)
        log.warning("prediction log dropped %d row(s): %s", rows, reason)

    # -- packing on the event loop ----------------------------------------------------------
    def drive(self, loop: asyncio.AbstractEventLoop) -> None:
        """Pack on ``loop`` (the server's event loop; call from it), the writer thread only
        inserting finished packs.

        Packing is Python work: done by the writer thread it would compete with the event loop
        for the GIL, and a thread that waits for the GIL gets it at the event loop's next
        system call and keeps it for a switch interval (5 ms), so every socket write could
        stall the loop behind the writer (measured: the writer's CPU per request doubled in the
        server, and the event loop's grew as much again). Packed here, in slices of
        ``_SLICE_ROWS`` between requests, it costs its CPU once; the SQL insert releases the
        GIL while SQLite works.
        """
        self._loop = loop
        self._tick_later = loop.call_later(self._interval_s, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        self._tick_later = None
        if self._stop:
            return
        self._pack_pending(_SLICE_ROWS)
        if self._queue:
            self._loop.call_soon(self._tick)  # requests that arrived meanwhile go first
        else:
            self._wake.set()
            self._tick_later = self._loop.call_later(self._interval_s, self._tick)

    def _pack_pending(self, most_rows: int | None = None) -> None:
        """Queued events -> packs ready for the writer (every queued event when ``None``)."""
        queue = self._queue
        while queue:
            batch: list[LogRecord] = []
            rows = newest = 0
            limit = self.settings.batch_rows if most_rows is None else most_rows
            while queue and rows < limit:
                record, seq = queue.popleft()
                batch.append(record)
                rows += record[10]
                newest = seq or newest
            try:
                self._ready.append((self.packs(batch), rows, newest))
            except Exception as exc:  # a bug in packing must not stop the log; the rows are counted
                log.error("prediction log could not pack a batch: %s", type(exc).__name__)
                self._out_rows += rows
                self._drop(rows, "write_failed")
            if most_rows is not None:
                return

    # -- writer -----------------------------------------------------------------------------
    def close(self, timeout: float = 60.0) -> None:
        """Write everything accepted so far, then stop the writer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)
        if self.journal is not None:  # kept for the next start unless everything was stored
            complete = not (self._queue or self._ready or self._thread.is_alive())
            self.journal.close(complete=complete)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every event queued before this call is written (tests, CLI)."""
        deadline = time.monotonic() + timeout
        self._pack_here = True
        try:
            while (self._queue or self._ready or self._busy) and time.monotonic() < deadline:
                self._wake.set()
                time.sleep(0.005)
        finally:
            self._pack_here = False

    def _replay_quietly(self) -> None:
        """Store what stopped workers left in their journals; on failure (the store is down)
        try again at the next interval (the journals stay on disk until stored)."""
        if self.journal is None:
            return
        try:
            replayed = replay_orphans(self.journal.dir.parent, "log", self.engine, self._apply)
        except Exception as exc:
            log.error("prediction log: could not replay journals yet: %s", type(exc).__name__)
            self._store_failure = f"the prediction log cannot be written ({type(exc).__name__})"
            return
        self._orphans = False
        if replayed:
            metrics.JOURNAL_REPLAYED.labels("log").inc(replayed)

    def _apply(self, conn: Connection, orphan: Orphan) -> None:
        """Store a stopped worker's journaled records; damaged bytes are marked in the audit
        trail (through the outbox, in this transaction)."""
        records = []
        for _, payload in orphan.records:
            record = orjson.loads(payload)
            inputs = record[8]
            if inputs and all(isinstance(v, int | float) for row in inputs for v in row):
                record[8] = np.asarray(inputs, dtype=np.float64)
            records.append(record)
        for start in range(0, len(records), self.settings.batch_rows):
            self._insert(conn, self.packs(records[start : start + self.settings.batch_rows]))
        if orphan.corrupt_bytes:
            reason = (
                f"the prediction-log journal of stopped worker {orphan.journal} held "
                f"{orphan.corrupt_bytes} unreadable bytes: log rows may be missing there"
            )
            record_change(conn, "monitoring.log_gap", "-", actor="medserve", reason=reason)

    def _run(self) -> None:
        while True:
            if self._orphans:
                self._replay_quietly()
            self._wake.wait(self._interval_s)
            self._wake.clear()
            stopping = self._stop
            if self.journal is not None and self.journal.failure is not None:
                self.journal.probe()  # room on the disk again: serving resumes
            if stopping or self._loop is None or self._pack_here:
                self._pack_pending()
            kept = False
            while self._ready:
                self._busy = True
                bundles: list[Bundle] = []
                rows = 0
                while self._ready and rows < self.settings.batch_rows:
                    bundle = self._ready.popleft()
                    bundles.append(bundle)
                    rows += bundle[1]
                self._out_rows += rows
                try:
                    packs = [pack for bundle in bundles for pack in bundle[0]]
                    self.write_packs(packs, max(bundle[2] for bundle in bundles))
                    self._store_failure = None
                except OperationalError as exc:  # the store is down or full: keep the rows
                    self._store_failure = (
                        f"the prediction log cannot be written ({type(exc.orig).__name__})"
                    )
                    log.error("prediction log: %s", self._store_failure)
                    self._ready.extendleft(reversed(bundles))
                    self._out_rows -= rows
                    kept = True
                except Exception as exc:  # the writer must survive anything; the rows are counted
                    log.error("prediction log writer failed on a batch: %s", type(exc).__name__)
                    self._drop(rows, "write_failed")
                finally:
                    self._busy = False
                    metrics.LOG_QUEUE_DEPTH.set(self._in_rows - self._out_rows)
                if kept:
                    break  # the next interval tries again
                if stopping or self._pack_here:
                    self._pack_pending()
            if stopping and not self._queue and not self._ready:
                return
            if stopping and kept:  # the store is down at shutdown: the journal keeps them
                log.error("prediction log: %d row(s) unwritten at shutdown", rows)
                return

    def _encoder(self, model: str, version: int) -> RowEncoder:
        key = (model, version)
        encoder = self._encoders.get(key)
        if encoder is None:
            encoder = self._encoders[key] = make_row_encoder(
                self.signature_of(model, version),
                self.salt,
                keep_text=self.keep_text_of(model) if self.keep_text_of is not None else False,
            )
        return encoder

    def _patient(self, patient_id: str) -> str:
        token = self._patients.get(patient_id)
        if token is None:
            if len(self._patients) > 4096:
                self._patients.clear()
            token = self._patients[patient_id] = pseudonymize(patient_id, salt=self.salt)
        return token

    def _patients_of(self, context: RequestContext, rows: int) -> list[str] | None:
        """One pseudonym per row where the request names a patient per row (several rows)."""
        per_row = context.patient_ids
        if per_row is None or rows < 2 or len(per_row) != rows:
            return None
        return [self._patient(p) for p in per_row]

    def _site(self, value: str) -> str:
        """A registered site code as sent; anything else as a keyed pseudonym."""
        if value in self._sites:
            return value
        return self._patient(value).replace("pid_", "site_", 1)

    def pack(self, model: str, version: int, records: list[LogRecord]) -> Pack:
        """One ``mon_prediction_batches`` row for ``records`` (one model version, in queue
        order), and the request ids that must be findable by id (see ``carries_time``)."""
        # Column by column with comprehensions and whole-array numpy calls: this runs on the
        # event loop for every logged prediction (a comprehension costs a third of a loop of
        # appends; one np.concatenate a tenth of a value-by-value conversion).
        rids = [r[2] for r in records]
        stamps = [r[4] for r in records]
        sizes = [r[10] for r in records]
        patients = [r[5] for r in records]
        sites = [r[6] for r in records]
        latency = [r[7] for r in records]
        by_id = {r[2] for r in records if not carries_time(r[2], r[4], r[3])}
        if max(sizes) == 1:
            ids = [rid + "-0" for rid in rids]
            times = stamps
        else:  # a request's rows share its id (with the row number), time, patient and site
            ids = [f"{rid}-{i}" for rid, n in zip(rids, sizes, strict=True) for i in range(n)]
            times = _repeat(stamps, sizes)
            sites, latency = (_repeat(c, sizes) for c in (sites, latency))
            patients = _per_row(patients, sizes)
        inputs = _stack([r[8] for r in records])
        missing = _missing_cells(records, sizes)
        numeric = type(inputs) is np.ndarray
        outputs = [r[9] for r in records]
        row = {
            "model_name": model,
            "version": version,
            "first_at": from_us(min(times)),
            "last_at": from_us(max(times)),
            "n": len(ids),
            "ids": dumps(ids).decode(),
            "times": dumps(times).decode(),
            "patients": dumps(patients).decode() if any(patients) else None,
            "sites": dumps(sites).decode() if any(sites) else None,
            # a numeric matrix as .npy bytes: JSON would format every value (1.4 µs a row of 30)
            "inputs": None if numeric else dumps(inputs).decode(),
            "inputs_npy": npy_bytes(inputs) if numeric else None,
            "outputs": dumps(output_columns(outputs, sizes)).decode(),
            "latency_ms": dumps(latency).decode(),
            "missing": dumps(missing).decode() if missing else None,
        }
        return row, by_id

    def packs(self, batch: list[LogRecord]) -> list[Pack]:
        """The batch grouped by model version, each group cut where it would span more than
        ``PACKED_SPAN_S`` (the bound the store's time-window queries rely on)."""
        groups: dict[tuple[str, int], list[LogRecord]] = {}
        for record in batch:
            key = (record[0], record[1])
            group = groups.get(key)
            if group is None:
                groups[key] = [record]
            else:
                group.append(record)
        span = PACKED_SPAN_S * 1_000_000
        packs = []
        for (model, version), records in groups.items():
            times = [r[4] for r in records]
            if max(times) - min(times) <= span:  # the usual case: one pack
                packs.append(self.pack(model, version, records))
                continue
            start = 0
            low = high = times[0]
            for i, at in enumerate(times):
                low, high = min(low, at), max(high, at)
                if high - low > span:
                    packs.append(self.pack(model, version, records[start:i]))
                    start, low, high = i, at, at
            packs.append(self.pack(model, version, records[start:]))
        return packs

    def write_packs(self, packs: list[Pack], journaled: int = 0) -> None:
        """Insert ``packs`` in one transaction, with how far the journal is stored (its newest
        record among them: ``journaled``); the journal's stored segments are then deleted."""
        started = time.perf_counter()
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with (
                    self.engine.connect().execution_options(medserve_write=True) as conn,
                    conn.begin(),
                ):
                    self._insert(conn, packs)
                    if journaled and self.journal is not None:
                        record_progress(conn, "log", self.journal.id, journaled)
                break
            except SQLAlchemyError:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 * 2**attempt)
        if journaled and self.journal is not None:
            self.journal.stored(journaled)
        rows = sum(row["n"] for row, _ in packs)
        metrics.LOG_WRITE_SECONDS.observe(time.perf_counter() - started)
        metrics.LOG_WRITTEN.inc(rows)
        self.written += rows

    @staticmethod
    def _insert(conn: Connection, packs: list[Pack]) -> None:
        for row, by_id in packs:
            seq = conn.execute(
                mon_prediction_batches.insert().returning(mon_prediction_batches.c.seq), row
            ).scalar_one()
            if by_id:
                conn.execute(
                    mon_prediction_ids.insert(),
                    [{"request_id": r[:96], "batch_seq": seq} for r in by_id],
                )


def _missing_cells(records: list[LogRecord], sizes: list[int]) -> list[list[int]]:
    """``[[row, feature, count], ...]``: ``count`` values of ``feature`` arrived missing in the
    request whose first row is the pack's ``row`` (its rows share one time, so a time window
    takes or leaves the count whole). Empty, and costing one pass, when nothing was imputed."""
    if not any(len(r) > 11 and r[11] is not None for r in records):
        return []
    cells: list[list[int]] = []
    row = 0
    for record, n in zip(records, sizes, strict=True):
        counts = record[11] if len(record) > 11 else None
        if counts is not None:
            cells.extend([row, j, int(c)] for j, c in enumerate(counts) if c)
        row += n
    return cells


def _repeat(values: list[Any], sizes: list[int]) -> list[Any]:
    return [value for value, n in zip(values, sizes, strict=True) for _ in range(n)]


def _per_row(values: list[Any], sizes: list[int]) -> list[Any]:
    """``_repeat``, except that a list (one value per row: ``RequestContext.patient_ids``) is
    spread over its rows as it is."""
    return [
        v
        for value, n in zip(values, sizes, strict=True)
        for v in (value if type(value) is list else [value] * n)
    ]


def from_us(us: int) -> datetime:
    """A log time (µs since the epoch, as ``times`` holds them) as an aware datetime."""
    return EPOCH + timedelta(microseconds=us)

"""The prediction log: every prediction recorded, de-identified, off the hot path.

``on_prediction`` runs on the event loop for every request, so it only timestamps the event and
appends it to a bounded deque (a few hundred nanoseconds, no lock). A writer thread per worker
process wakes every ``flush_interval_s`` (1 s, or when the queue passes half full), de-identifies
and writes everything queued in one transaction. ``close()`` drains everything that was accepted:
the server calls it on shutdown (SIGTERM included), so entries are not lost.

Why the writer is shaped this way: it shares the GIL with the event loop, and a thread that
released the GIL may wait a whole switch interval (5 ms) to get it back from a busy event loop.
``executemany`` releases it once per row (each ``sqlite3_step``) and holds SQLite's single write
lock meanwhile, stalling the home's other writers (the audit trail, the other workers). So rows
go in as multi-row ``INSERT ... VALUES (...), (...)`` statements of up to 256 rows: one
GIL release and one B-tree pass per chunk. And it wakes rarely: every wakeup starts a tug of
war for the GIL with the event loop, and at 20 wakeups a second that cost more CPU than the
writing itself (measured with ``python -m benchmarks.governance --cpu``).

When the writer cannot keep up the queue fills, and the declared policy applies: ``block`` waits
up to ``block_ms`` for room (back-pressure on the callers), then drops; ``drop`` drops at once.
Every dropped row is counted in ``medserve_monitor_log_dropped_total`` and logged (no PHI).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from medserve.monitoring import metrics
from medserve.monitoring.config import MonitoringSettings
from medserve.registry.signature import Signature
from medserve.security.phi import deidentify_text, pseudonymize
from medserve.serving.events import PredictionEvent
from medserve.store.tables_monitoring import mon_predictions

log = logging.getLogger(__name__)

_WRITE_ATTEMPTS = 5
# Rows per INSERT statement: 256, then powers of two for the rest, so that a handful of
# statements are ever compiled (9 columns x 256 rows: 2,304 parameters, under SQLite's 32,766).
_CHUNKS = (256, 128, 64, 32, 16, 8, 4, 2, 1)

_COLUMNS = (
    "id",
    "model_name",
    "version",
    "at",
    "patient",
    "site",
    "inputs",
    "outputs",
    "latency_ms",
)
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _sqlite_time(value: datetime) -> str:
    return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _same(value: datetime) -> datetime:
    return value


def _json_default(value: Any) -> Any:
    """What orjson does not take natively: non-contiguous or object/str numpy arrays."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default, option=_JSON_OPTIONS)


SignatureLookup = Callable[[str, int], Signature | None]
# One version's input matrix -> one JSON-able value per row (numpy rows are fine: orjson
# encodes them natively, without a Python float per value).
RowEncoder = Callable[[np.ndarray], Sequence[Any]]


def _numeric_rows(X: np.ndarray) -> Sequence[Any]:
    return list(X)


def make_row_encoder(signature: Signature | None, salt: bytes) -> RowEncoder:
    """How one version's input rows become de-identified JSON (feature order of the signature).

    Numbers are kept (drift needs them); identifier-flagged fields become salted pseudonyms and
    every other string goes through Safe Harbor text de-identification. An all-numeric signature
    without identifiers costs nothing per value: its rows are logged as they are.
    """
    if signature is None:
        return _numeric_rows
    identifiers = {i for i, f in enumerate(signature.inputs) if f.identifier}
    if not identifiers and signature.all_numeric:
        return _numeric_rows

    def clean(index: int, value: Any) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or (isinstance(value, float) and value != value):
            return None
        if index in identifiers:
            return pseudonymize(str(value), salt=salt)
        if isinstance(value, str):
            return deidentify_text(value)
        return value

    def encode(X: np.ndarray) -> list[list[Any]]:
        return [[clean(i, v) for i, v in enumerate(row)] for row in X]

    return encode


def output_rows(outputs: dict[str, np.ndarray], n: int) -> list[dict[str, Any]]:
    """One ``{output: value}`` per row (numpy values as they are; orjson encodes them)."""
    columns: dict[str, Any] = {}
    for key, value in outputs.items():
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        columns[key] = array if array.ndim and array.shape[0] == n else None
    if n == 1:  # the common single-row request
        return [{k: (c[0] if c is not None else None) for k, c in columns.items()}]
    return [{k: (c[i] if c is not None else None) for k, c in columns.items()} for i in range(n)]


class PredictionLog:
    """A ``PredictionObserver`` writing to ``mon_predictions`` through its own thread."""

    def __init__(
        self,
        engine: Engine,
        settings: MonitoringSettings,
        *,
        salt: bytes,
        signature_of: SignatureLookup,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.salt = salt
        self.signature_of = signature_of
        self._queue: deque[tuple[PredictionEvent, float]] = deque()
        self._max = max(1, settings.queue_size)
        self._soon = max(1, self._max // 2)
        self._block_s = settings.block_ms / 1000 if settings.queue_full == "block" else 0.0
        self._interval_s = max(0.001, settings.flush_interval_s)
        self._wake = threading.Event()  # the writer: write now (queue half full, flush, close)
        self._room = threading.Condition()  # callers blocked on a full queue
        self._stop = False
        self._busy = False  # the writer holds popped events not yet written
        # The bound counts rows (a 100-row request is 100 rows): two counters, each written
        # by one thread only (the event loop / the writer), so no lock on the hot path.
        self._in_rows = 0
        self._out_rows = 0
        self._encoders: dict[tuple[str, int], RowEncoder] = {}
        self._patients: dict[str, str] = {}
        sqlite = engine.dialect.name == "sqlite"
        marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._values = f"({', '.join([marker] * len(_COLUMNS))})"
        self._insert_head = f"INSERT INTO {mon_predictions.name} ({', '.join(_COLUMNS)}) VALUES "
        self._sqls: dict[int, str] = {}
        self._second = -1
        self._second_text = ""
        # SQLite keeps SQLAlchemy's DateTime text form; other drivers take datetimes.
        self._time_param: Callable[[datetime], Any] = _sqlite_time if sqlite else _same
        self._thread = threading.Thread(target=self._run, name="medserve-prediction-log")
        self._thread.daemon = True
        self._closed = False
        self.written = 0
        self.dropped = 0
        self._thread.start()

    # -- hot path ---------------------------------------------------------------------------
    def on_prediction(self, event: PredictionEvent) -> None:
        rows = event.inputs.shape[0]
        queued = self._in_rows - self._out_rows
        if queued < self._max:
            self._queue.append((event, time.time()))
            self._in_rows += rows
            if queued < self._soon <= queued + rows:
                self._wake.set()
            return
        self._full(event, rows)

    def _full(self, event: PredictionEvent, rows: int) -> None:
        self._wake.set()
        if self._block_s > 0:
            deadline = time.monotonic() + self._block_s
            with self._room:
                while self._in_rows - self._out_rows >= self._max:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._room.wait(left):
                        break
            if self._in_rows - self._out_rows < self._max:
                self._queue.append((event, time.time()))
                self._in_rows += rows
                return
        self._drop(rows, "queue_full")

    def _drop(self, rows: int, reason: str) -> None:
        self.dropped += rows
        metrics.LOG_DROPPED.labels(reason).inc(rows)
        log.warning("prediction log dropped %d row(s): %s", rows, reason)

    # -- writer -----------------------------------------------------------------------------
    def close(self, timeout: float = 60.0) -> None:
        """Write everything accepted so far, then stop the writer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every event queued before this call is written (tests, CLI)."""
        deadline = time.monotonic() + timeout
        while (self._queue or self._busy) and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.005)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            stopping = self._stop
            while self._queue:
                self._busy = True
                batch: list[tuple[PredictionEvent, float]] = []
                rows = 0
                queue = self._queue
                while queue and rows < self.settings.batch_rows:
                    item = queue.popleft()
                    batch.append(item)
                    rows += item[0].inputs.shape[0]
                self._out_rows += rows
                if self._block_s > 0:
                    with self._room:
                        self._room.notify_all()
                try:
                    self._write(batch)
                except Exception:  # the writer must survive anything; the rows are counted
                    log.exception("prediction log writer failed on a batch")
                    self._drop(rows, "write_failed")
                finally:
                    self._busy = False
                    metrics.LOG_QUEUE_DEPTH.set(self._in_rows - self._out_rows)
                if not stopping and self._in_rows - self._out_rows < self._soon:
                    break  # let more arrive: fewer, larger transactions
            if stopping and not self._queue:
                return

    def _encoder(self, model: str, version: int) -> RowEncoder:
        key = (model, version)
        encoder = self._encoders.get(key)
        if encoder is None:
            encoder = self._encoders[key] = make_row_encoder(
                self.signature_of(model, version), self.salt
            )
        return encoder

    def _patient(self, patient_id: str) -> str:
        token = self._patients.get(patient_id)
        if token is None:
            if len(self._patients) > 4096:
                self._patients.clear()
            token = self._patients[patient_id] = pseudonymize(patient_id, salt=self.salt)
        return token

    def _when(self, at: float) -> Any:
        """The row time: SQLite's text form, with the date part formatted once a second."""
        if self._time_param is not _sqlite_time:
            return datetime.fromtimestamp(at, UTC)
        second = int(at)
        if second != self._second:
            self._second = second
            self._second_text = _sqlite_time(datetime.fromtimestamp(second, UTC))[:19]
        return f"{self._second_text}.{int((at - second) * 1e6):06d}"

    def rows_for(self, event: PredictionEvent, at: float) -> list[tuple[Any, ...]]:
        """Row tuples in ``_COLUMNS`` order (raw DB-API parameters: SQLAlchemy's per-value
        type processing would double the writer's work)."""
        context = event.context
        n = event.inputs.shape[0]
        inputs = self._encoder(event.model, event.version)(event.inputs)
        outputs = output_rows(event.outputs, n)
        patient = self._patient(context.patient_id) if context.patient_id else None
        when = self._when(at)
        latency_ms = event.latency_s * 1000.0
        model, version, site, rid = event.model, event.version, context.site, context.request_id
        return [
            (
                f"{rid}-{i}",
                model,
                version,
                when,
                patient,
                site,
                dumps(inputs[i]).decode(),
                dumps(outputs[i]).decode(),
                latency_ms,
            )
            for i in range(n)
        ]

    def _sql(self, rows: int) -> str:
        sql = self._sqls.get(rows)
        if sql is None:
            sql = self._sqls[rows] = self._insert_head + ", ".join([self._values] * rows)
        return sql

    def _write(self, batch: list[tuple[PredictionEvent, float]]) -> None:
        rows: list[tuple[Any, ...]] = []
        for event, at in batch:
            rows.extend(self.rows_for(event, at))
        started = time.perf_counter()
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with (
                    self.engine.connect().execution_options(medserve_write=True) as conn,
                    conn.begin(),
                ):
                    start = 0
                    for size in _CHUNKS:
                        while len(rows) - start >= size:
                            chunk = rows[start : start + size]
                            flat = tuple([value for row in chunk for value in row])
                            conn.exec_driver_sql(self._sql(size), flat)
                            start += size
                break
            except SQLAlchemyError:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 * 2**attempt)
        metrics.LOG_WRITE_SECONDS.observe(time.perf_counter() - started)
        metrics.LOG_WRITTEN.inc(len(rows))
        self.written += len(rows)

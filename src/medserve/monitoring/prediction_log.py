"""The prediction log: every prediction recorded, de-identified, off the hot path.

``on_prediction`` runs on the event loop for every request, so it only timestamps the event and
puts it on a bounded queue (about a microsecond). A writer thread per worker process drains the
queue, de-identifies, and writes batches in one transaction each. ``close()`` drains everything
that was accepted: the server calls it on shutdown (SIGTERM included), so entries are not lost.

When the writer cannot keep up the queue fills, and the declared policy applies: ``block`` waits
up to ``block_ms`` for room (back-pressure on the callers), then drops; ``drop`` drops at once.
Every dropped row is counted in ``medserve_monitor_log_dropped_total`` and logged (no PHI).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
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

_STOP = object()
_WRITE_ATTEMPTS = 5

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


def _sqlite_time(value: datetime) -> str:
    return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _same(value: datetime) -> datetime:
    return value


SignatureLookup = Callable[[str, int], Signature | None]
RowEncoder = Callable[[np.ndarray], list[str]]


def _numeric_rows(X: np.ndarray) -> list[str]:
    return [orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY).decode() for row in X]


def make_row_encoder(signature: Signature | None, salt: bytes) -> RowEncoder:
    """How one version's input rows become de-identified JSON (feature order of the signature).

    Numbers are kept (drift needs them); identifier-flagged fields become salted pseudonyms and
    every other string goes through Safe Harbor text de-identification.
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

    def encode(X: np.ndarray) -> list[str]:
        return [orjson.dumps([clean(i, v) for i, v in enumerate(row)]).decode() for row in X]

    return encode


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value


def encode_outputs(outputs: dict[str, np.ndarray], n: int) -> list[str]:
    if n == 1:  # the common single-row request: one dict, one dump
        return [orjson.dumps({k: _plain(np.asarray(v)[0]) for k, v in outputs.items()}).decode()]
    columns: dict[str, list[Any]] = {}
    for key, value in outputs.items():
        array = np.asarray(value)
        columns[key] = array.tolist() if array.shape[:1] == (n,) else [None] * n
    keys = list(columns)
    return [orjson.dumps({k: columns[k][i] for k in keys}).decode() for i in range(n)]


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
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, settings.queue_size))
        self._block_s = settings.block_ms / 1000 if settings.queue_full == "block" else 0.0
        self._encoders: dict[tuple[str, int], RowEncoder] = {}
        sqlite = engine.dialect.name == "sqlite"
        marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._insert_sql = (
            f"INSERT INTO {mon_predictions.name} ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join([marker] * len(_COLUMNS))})"
        )
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
        item = (event, time.time())
        try:
            self._queue.put_nowait(item)
            return
        except queue.Full:
            pass
        if self._block_s > 0:
            try:
                self._queue.put(item, timeout=self._block_s)
                return
            except queue.Full:
                pass
        self._drop(event.inputs.shape[0], "queue_full")

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
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every event queued before this call is written (tests, CLI)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=self.settings.flush_interval_s)
            except queue.Empty:
                continue
            batch: list[tuple[PredictionEvent, float]] = []
            taken = 1
            if first is _STOP:
                stop = True
            else:
                batch.append(first)
            rows = sum(e.inputs.shape[0] for e, _ in batch)
            while rows < self.settings.batch_rows:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                taken += 1
                if item is _STOP:
                    stop = True
                    continue
                batch.append(item)
                rows += item[0].inputs.shape[0]
            try:
                if batch:
                    self._write(batch)
            except Exception:  # the writer must survive anything; the rows are counted
                log.exception("prediction log writer failed on a batch")
                self._drop(rows, "write_failed")
            finally:
                for _ in range(taken):
                    self._queue.task_done()
                metrics.LOG_QUEUE_DEPTH.set(self._queue.qsize())

    def _encoder(self, model: str, version: int) -> RowEncoder:
        key = (model, version)
        encoder = self._encoders.get(key)
        if encoder is None:
            encoder = self._encoders[key] = make_row_encoder(
                self.signature_of(model, version), self.salt
            )
        return encoder

    def rows_for(self, event: PredictionEvent, at: float) -> list[tuple[Any, ...]]:
        """Row tuples in ``_COLUMNS`` order (raw DB-API parameters: this is the bulk of the
        writer's work, and SQLAlchemy's per-row type processing would double it)."""
        context = event.context
        n = event.inputs.shape[0]
        inputs = self._encoder(event.model, event.version)(event.inputs)
        outputs = encode_outputs(event.outputs, n)
        patient = pseudonymize(context.patient_id, salt=self.salt) if context.patient_id else None
        when = self._time_param(datetime.fromtimestamp(at, UTC))
        latency_ms = event.latency_s * 1000.0
        model, version, site = event.model, event.version, context.site
        return [
            (pid, model, version, when, patient, site, inputs[i], outputs[i], latency_ms)
            for i, pid in enumerate(event.prediction_ids)
        ]

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
                    conn.exec_driver_sql(self._insert_sql, rows)
                break
            except SQLAlchemyError:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 * 2**attempt)
        metrics.LOG_WRITE_SECONDS.observe(time.perf_counter() - started)
        metrics.LOG_WRITTEN.inc(len(rows))
        self.written += len(rows)

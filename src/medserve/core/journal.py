"""The write-ahead journal: what a worker has acknowledged survives the worker.

A prediction is answered before its audit entry and log record reach the database (they are
written in batches, once a second: a transaction per request would cost more than the request).
Between the answer and the batch, a killed worker (kill -9, the OOM killer, a crash) would lose
what it acknowledged. So each record is first appended to a per-worker, per-stream file with one
``write()`` (in the kernel's page cache when it returns: it survives the process, not a power
cut), and only then is the response sent. The writer stores the records and, in the same
transaction, how far it got (``journal_progress``); segments wholly stored are deleted. What a
dead worker left is replayed by the next writer that starts (``replay_orphans``), skipping what
the progress row says was stored, so nothing is stored twice.

Power loss: with ``fsync_ms`` a thread flushes the file to disk every that many milliseconds
(group commit): at most that window of acknowledged records can be lost to a power cut. Off by
default (``MEDSERVE_JOURNAL_FSYNC_MS``).

A record is one line: ``<seq hex> <crc32 hex> <payload>\\n`` (payload: JSON without newlines).
A torn or corrupt line (a power cut mid-write, a damaged disk) is counted, never guessed at: the
caller writes a gap marker into the audit trail for it.

Each journal is owned through an ``flock`` on its ``.lock`` file, held for the writer's life: a
lock that can be taken belongs to a process that is gone, and only one process replays it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from medserve.core.errors import StoreError
from medserve.core.store.schema import journal_progress

log = logging.getLogger(__name__)

SEGMENT_BYTES = 16 * 1024 * 1024  # a segment is closed past this size ...
SEGMENT_SECONDS = 60.0  # ... or this age, so stored records do not linger on disk
_SUFFIX = ".jnl"
_write = os.write  # one name to replace in tests that fill the disk


class JournalError(StoreError):
    """The journal cannot be written (disk full, read-only, gone): a 503 under fail_closed."""

    code = "journal_unavailable"


def journal_dir(home: Path) -> Path:
    return home / "journal"


@dataclass
class _Segment:
    path: Path
    last_seq: int


class Journal:
    """One worker's journal of one stream (``audit`` or ``log``) under ``directory/stream``.

    ``append`` runs on the event loop (one ``write()``, a few microseconds); ``stored`` and
    ``close`` run in the stream's writer thread.
    """

    def __init__(
        self,
        directory: Path,
        stream: str,
        *,
        fsync_ms: float = 0.0,
        segment_bytes: int = SEGMENT_BYTES,
        segment_seconds: float = SEGMENT_SECONDS,
    ) -> None:
        self.stream = stream
        self.dir = directory / stream
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.seq = 0
        self.failure: str | None = None  # why the last append failed (None: it worked)
        self._segment_bytes = segment_bytes
        self._segment_seconds = segment_seconds
        self._lock_fd = os.open(self.dir / f"{self.id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._number = 0
        self._fd = -1
        self._size = 0
        self._opened = 0.0
        self._path = self.dir / "unopened"
        self._closed_segments: deque[_Segment] = deque()  # oldest first, each wholly written
        self._stored = 0  # the highest seq known stored
        self._lock = threading.Lock()  # append (event loop) vs. truncate (writer thread)
        self._fsync_stop = threading.Event()
        self._fsync_thread: threading.Thread | None = None
        self._open_segment()
        if fsync_ms > 0:
            self._fsync_thread = threading.Thread(
                target=self._fsync_loop, args=(fsync_ms / 1000.0,), daemon=True
            )
            self._fsync_thread.start()

    # -- the event loop's side ----------------------------------------------------------------
    def _open_segment(self) -> None:
        self._number += 1
        self._path = self.dir / f"{self.id}.{self._number:06d}{_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(self._path, flags, 0o600)
        self._size = 0
        self._opened = time.monotonic()

    def _roll(self) -> None:
        """Close the current segment (it can be deleted once stored) and open the next."""
        with self._lock:
            old_fd, old_path = self._fd, self._path
            self._open_segment()
            self._closed_segments.append(_Segment(old_path, self.seq))
            os.close(old_fd)

    def append(self, payload: bytes) -> int:
        """Append one record with one ``write()`` and return its sequence number; raises
        ``JournalError`` when it cannot be written whole (nothing of it is left behind)."""
        if self._size >= self._segment_bytes or (
            self._size and time.monotonic() - self._opened >= self._segment_seconds
        ):
            try:
                self._roll()
            except OSError as exc:
                raise self._failed(exc) from exc
        seq = self.seq + 1
        line = b"%x %08x " % (seq, zlib.crc32(payload)) + payload + b"\n"
        with self._lock:
            try:
                written = _write(self._fd, line)
            except OSError as exc:
                raise self._failed(exc) from exc
            if written != len(line):  # the disk filled mid-record: take the torn part back
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
                raise self._failed(OSError(errno.ENOSPC, "short write"))
            self._size += written
            self.seq = seq
        self.failure = None
        return seq

    def _failed(self, exc: OSError) -> JournalError:
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        self.failure = f"the {self.stream} journal cannot be written ({name})"
        return JournalError(self.failure)

    def probe(self) -> bool:
        """Whether a record could be written now (the disk has room again): a small file is
        written, flushed and removed. The writer calls this while ``failure`` is set."""
        probe = self.dir / f"{self.id}.probe"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write(fd, b"\0" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
                probe.unlink(missing_ok=True)
        except OSError:
            return False
        self.failure = None
        return True

    # -- the writer's side --------------------------------------------------------------------
    def stored(self, upto: int) -> None:
        """Records up to ``upto`` are in the store: delete the closed segments they fill, and
        empty the open one when it holds nothing else (an idle worker keeps no stored record
        on disk: erasure and retention reach it within a writer interval)."""
        self._stored = max(self._stored, upto)
        segments = self._closed_segments
        while segments and segments[0].last_seq <= self._stored:
            segment = segments.popleft()
            with contextlib.suppress(OSError):
                segment.path.unlink()
        with self._lock:
            if self._size and self._stored >= self.seq:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, 0)
                    self._size = 0

    def close(self, *, complete: bool) -> None:
        """Release the journal: with ``complete`` (everything was stored) its files are removed;
        otherwise they stay for the next start to replay."""
        self._fsync_stop.set()
        if self._fsync_thread is not None:
            self._fsync_thread.join()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        if complete and self._stored >= self.seq:
            for segment in [*self._closed_segments, _Segment(self._path, self.seq)]:
                with contextlib.suppress(OSError):
                    segment.path.unlink()
            with contextlib.suppress(OSError):
                (self.dir / f"{self.id}.lock").unlink()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def _fsync_loop(self, interval: float) -> None:
        while not self._fsync_stop.wait(interval):
            with contextlib.suppress(OSError):  # a closed fd after a roll: the next one
                os.fsync(self._fd)


def failure_of(journal: Journal | None, store_failure: str | None) -> str | None:
    """Why a journaled writer cannot record now: its journal first, then its store (None: it
    can). Fail closed refuses predictions and readiness while this is set."""
    if journal is not None and journal.failure is not None:
        return journal.failure
    return store_failure


# -- progress ---------------------------------------------------------------------------------
def record_progress(conn: Connection, stream: str, journal: str, upto: int) -> None:
    """In the writer's transaction: records up to ``upto`` of ``journal`` are stored."""
    t = journal_progress
    where = (t.c.stream == stream) & (t.c.journal == journal)
    if conn.execute(t.update().where(where).values(upto=upto)).rowcount == 0:
        conn.execute(t.insert().values(stream=stream, journal=journal, upto=upto))


def progress_of(conn: Connection, stream: str, journal: str) -> int:
    t = journal_progress
    where = (t.c.stream == stream) & (t.c.journal == journal)
    value = conn.execute(sa.select(t.c.upto).where(where)).scalar()
    return int(value) if value is not None else 0


# -- replay -----------------------------------------------------------------------------------
@dataclass
class Orphan:
    """A journal whose worker is gone: its records past what was stored, and the damage."""

    stream: str
    journal: str
    records: list[tuple[int, bytes]]
    corrupt_bytes: int


def _read(paths: list[Path], after: int) -> tuple[list[tuple[int, bytes]], int]:
    """The intact records past ``after`` and the bytes of torn or corrupt lines."""
    records: list[tuple[int, bytes]] = []
    corrupt = 0
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        lines = data.split(b"\n")
        corrupt += len(lines.pop())  # after the last newline: a torn record (or nothing)
        for line in lines:
            try:
                seq_text, crc_text, payload = line.split(b" ", 2)
                seq = int(seq_text, 16)
                intact = int(crc_text, 16) == zlib.crc32(payload)
            except ValueError:
                intact = False
            if not intact:
                corrupt += len(line) + 1
            elif seq > after:
                records.append((seq, payload))
    return records, corrupt


def replay_orphans(
    directory: Path,
    stream: str,
    engine: Engine,
    apply: Callable[[Connection, Orphan], None],
) -> int:
    """Store what dead workers left in ``directory/stream`` and delete their journals.

    ``apply(conn, orphan)`` stores the orphan's records inside ``conn``'s transaction, in which
    the progress is then set to the last record: replaying twice stores nothing twice. A journal
    still locked belongs to a live worker and is left alone. Returns the records replayed.
    """
    folder = directory / stream
    if not folder.is_dir():
        return 0
    replayed = 0
    for lock_path in sorted(folder.glob("*.lock")):
        journal = lock_path.name[: -len(".lock")]
        for orphan in _claimed(folder, lock_path, journal):
            with engine.connect().execution_options(medserve_write=True) as conn, conn.begin():
                after = progress_of(conn, stream, journal)
                records, corrupt = _read(orphan, after)
                found = Orphan(stream, journal, records, corrupt)
                if records or corrupt:
                    apply(conn, found)
                conn.execute(
                    journal_progress.delete().where(
                        (journal_progress.c.stream == stream)
                        & (journal_progress.c.journal == journal)
                    )
                )
            for path in orphan:
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                lock_path.unlink()
            replayed += len(records)
            if records or corrupt:
                log.warning(
                    "%s journal %s: replayed %d record(s) left by a stopped worker "
                    "(%d corrupt byte(s))",
                    stream,
                    journal,
                    len(records),
                    corrupt,
                )
    return replayed


def _claimed(folder: Path, lock_path: Path, journal: str) -> Iterator[list[Path]]:
    """The segments of ``journal`` while holding its lock (none if a live worker holds it)."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # its worker is alive
        yield sorted(folder.glob(f"{journal}.*{_SUFFIX}"))
    finally:
        os.close(fd)


def scrubber(home: Path) -> Callable[[str], int]:
    """Erasure's hook: remove every record naming a pseudonym from the journals of stopped
    workers (a live worker's records are stored within a writer interval, then emptied from its
    journal: see ``Journal.stored``). Returns the records removed."""

    def scrub_one(pseudonym: str) -> int:
        token = pseudonym.encode()
        return scrub(journal_dir(home), lambda line: token in line)

    return scrub_one


def scrub(directory: Path, matches: Callable[[bytes], bool]) -> int:
    """Remove every record for which ``matches(line)`` holds from the journals of stopped
    workers. Returns the records removed."""
    removed = 0
    for stream_dir in directory.glob("*"):
        if not stream_dir.is_dir():
            continue
        for lock_path in stream_dir.glob("*.lock"):
            journal = lock_path.name[: -len(".lock")]
            for paths in _claimed(stream_dir, lock_path, journal):
                for path in paths:
                    data = path.read_bytes()
                    lines = data.split(b"\n")
                    kept = [line for line in lines if not (line and matches(line))]
                    if len(kept) != len(lines):
                        removed += len(lines) - len(kept)
                        tmp = path.with_suffix(".tmp")
                        tmp.write_bytes(b"\n".join(kept))
                        os.replace(tmp, path)
    return removed

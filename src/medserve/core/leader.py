"""One leader among every server process of a deployment, for work that must run once (the
monitoring schedule).

On PostgreSQL, shared by every node of a cluster, the leader holds a session-level advisory lock
on a connection of its own for as long as it lives: when its process dies, PostgreSQL ends the
session and frees the lock, and another process takes over on its next try. On SQLite (one
machine) an ``flock`` on a file in the home does the same for the processes of that machine.
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import IO, Any

from sqlalchemy.engine import Engine

from medserve.core.store.unit_of_work import engine_of

MONITOR_SCHEDULE_LOCK = 727_016  # the advisory lock id of the monitoring schedule


class LeaderLock:
    """``try_acquire()`` until it returns True; then this process leads until ``release()``."""

    def __init__(self, store: object, lock_id: int, lock_file: Path) -> None:
        self.lock_id = lock_id
        self.lock_file = lock_file
        engine: Engine | None
        try:
            engine = engine_of(store)
        except Exception:  # not a SQL store: the file lock
            engine = None
        self.engine = engine if engine is not None and engine.dialect.name == "postgresql" else None
        self._connection: Any = None
        self._handle: IO[str] | None = None

    @property
    def kind(self) -> str:
        return "postgresql advisory lock" if self.engine is not None else "file lock"

    def try_acquire(self) -> bool:
        if self.engine is not None:
            return self._try_advisory()
        return self._try_file()

    def _try_advisory(self) -> bool:
        if self._connection is not None:
            return True
        connection = self.engine.connect()  # type: ignore[union-attr]
        try:
            got = connection.exec_driver_sql(
                f"SELECT pg_try_advisory_lock({int(self.lock_id)})"
            ).scalar_one()
            connection.commit()  # the lock is the session's, not the transaction's
        except Exception:
            connection.close()
            raise
        if not got:
            connection.close()
            return False
        self._connection = connection
        return True

    def _try_file(self) -> bool:
        if self._handle is not None:
            return True
        handle = open(self.lock_file, "a+")  # noqa: SIM115 (held open while leading)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # a dead connection has freed it already
                self._connection.exec_driver_sql(f"SELECT pg_advisory_unlock({int(self.lock_id)})")
                self._connection.commit()
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
        if self._handle is not None:
            self._handle.close()  # closing the file frees the flock
            self._handle = None

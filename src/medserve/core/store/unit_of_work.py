"""One way to run a transaction on the one SQLAlchemy engine, shared by every repository.

``read()`` is a plain transaction; ``write()`` marks the connection as a writer (SQLite then begins
with ``BEGIN IMMEDIATE``, so writers queue on the lock instead of failing to upgrade), and runs the
``on_commit`` statements of the repository inside the same transaction (the registry uses that to
bump its reload token, only for changes that affect serving). A lost database connection becomes a
``StoreError`` naming the repository, never a raw driver error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from medserve.core.errors import StoreError


class UnitOfWork:
    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            raise StoreError(f"{self.name} store unavailable: {type(exc.orig).__name__}") from exc

    @contextmanager
    def write(
        self, before_commit: Callable[[Connection], None] | None = None
    ) -> Iterator[Connection]:
        """A write transaction; ``before_commit(conn)`` runs last inside it, when given."""
        try:
            with self.engine.connect().execution_options(medserve_write=True) as conn, conn.begin():
                yield conn
                if before_commit is not None:
                    before_commit(conn)
        except OperationalError as exc:
            raise StoreError(f"{self.name} store unavailable: {type(exc.orig).__name__}") from exc


def engine_of(store: object) -> Engine:
    """The SQL engine behind a registry store (or an engine itself): what repositories share."""
    engine = store if isinstance(store, Engine) else getattr(store, "engine", None)
    if not isinstance(engine, Engine):
        raise StoreError("this needs the SQL registry store (SQLite or PostgreSQL)")
    return engine

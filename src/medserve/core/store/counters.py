"""Fixed-window counters shared by every process of a deployment, on PostgreSQL.

A Ray deployment's replicas (or uvicorn servers on several machines) each see a share of a
credential's requests, so a limit kept in each process's memory can only be split between them
(rate / replicas): uneven routing then refuses a client below its rate, and a replica count that
changes (autoscaling) changes the limit. Here the count lives in the registry database instead.

One statement per count, in autocommit (one round trip): ``INSERT ... ON CONFLICT DO UPDATE ...
RETURNING`` adds to the current window's row, or creates it, and returns the new total. Two
replicas counting at once serialise on that row's lock, so neither loses an increment and
exactly ``limit`` requests see a total within it. The window is taken from the database's clock,
not the replica's, so nodes with skewed clocks agree on which window a request falls in. Passed
windows are swept by whichever process finds the sweep due (at most once a minute each).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from medserve.core.errors import InvalidRequestError, StoreError

SWEEP_EVERY_S = 60.0

_ADD = sa.text(
    """
    INSERT INTO cluster_counters (scope, counter_key, window_ms, until_ms, total)
    SELECT :scope, :key, start, start + :window, :amount
    FROM (
        SELECT (floor(extract(epoch FROM clock_timestamp()) * 1000 / :window) * :window)::bigint
            AS start
    ) AS now
    ON CONFLICT (scope, counter_key, window_ms)
    DO UPDATE SET total = cluster_counters.total + EXCLUDED.total
    RETURNING total, until_ms, (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS now_ms
    """
)
# Several counters at once, each in its own window, all from one instant of the database's clock
# (``statement_timestamp``: a minute and a day window agree). Rows are written in key order, so
# two transactions counting the same keys lock them in the same order (no deadlock).
_ADD_MANY = sa.text(
    """
    INSERT INTO cluster_counters (scope, counter_key, window_ms, until_ms, total)
    SELECT :scope, c.key, s.start, s.start + c.win, c.amount
    FROM unnest(CAST(:keys AS text[]), CAST(:wins AS bigint[]), CAST(:amounts AS bigint[]))
        AS c(key, win, amount)
    CROSS JOIN LATERAL (
        SELECT (floor(extract(epoch FROM statement_timestamp()) * 1000 / c.win) * c.win)::bigint
            AS start
    ) AS s
    ORDER BY c.key
    ON CONFLICT (scope, counter_key, window_ms)
    DO UPDATE SET total = cluster_counters.total + EXCLUDED.total
    RETURNING counter_key, window_ms, total, until_ms,
        (extract(epoch FROM statement_timestamp()) * 1000)::float8 AS now_ms
    """
)
# A correction of given windows, as an upsert in key order like ``_ADD_MANY`` (an ``UPDATE ...
# FROM`` locks rows in the plan's order, which deadlocked against admissions); a window already
# swept comes back with only the correction, and passed, is swept again.
_ADJUST = sa.text(
    """
    INSERT INTO cluster_counters (scope, counter_key, window_ms, until_ms, total)
    SELECT :scope, u.key, u.start, u.start + u.win, u.amount
    FROM unnest(
        CAST(:keys AS text[]), CAST(:starts AS bigint[]), CAST(:wins AS bigint[]),
        CAST(:amounts AS bigint[])
    ) AS u(key, start, win, amount)
    ORDER BY u.key
    ON CONFLICT (scope, counter_key, window_ms)
    DO UPDATE SET total = cluster_counters.total + EXCLUDED.total
    """
)
_PEEK = sa.text(
    """
    SELECT c.key, coalesce(t.total, 0)
    FROM unnest(CAST(:keys AS text[]), CAST(:wins AS bigint[])) AS c(key, win)
    LEFT JOIN cluster_counters AS t
        ON t.scope = :scope AND t.counter_key = c.key
        AND t.window_ms = (floor(extract(epoch FROM statement_timestamp()) * 1000 / c.win)
            * c.win)::bigint
    """
)
# windows are kept a minute after they end (what a burst counted stays readable while it is
# looked at, e.g. by the Ray test's check of every request counted), then swept
_SWEEP = sa.text(
    "DELETE FROM cluster_counters "
    "WHERE until_ms < (extract(epoch FROM clock_timestamp()) * 1000)::bigint - 60000"
)


@dataclass(frozen=True)
class Count:
    """One counter of ``SharedCounters.add_within``: add ``amount`` to ``key``'s current window
    of ``window_s`` seconds; ``limit``: the most its total may reach (None: no limit)."""

    key: str
    window_s: float
    amount: int
    limit: int | None = None


@dataclass(frozen=True)
class Counted:
    """A counter's window after (or, refused, as it would have been after) the addition."""

    key: str
    start_ms: int  # the window's start (database clock): ``adjust`` takes it back
    total: int
    left_s: float


def key_digest(key: str) -> str:
    """How a credential is stored as a counter key: a digest (an OIDC subject may name a
    person), the same for every scope."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _window_ms(window_s: float) -> int:
    return max(1, math.ceil(window_s * 1000))


@contextlib.contextmanager
def _connected(engine: Engine) -> Iterator[Connection]:
    """A connection whose database errors raise ``StoreError`` (the caller decides whether to
    fail open or closed)."""
    try:
        with engine.connect() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise StoreError(f"shared counter unavailable ({type(exc).__name__})") from exc


class SharedCounters:
    """``add(scope, key, window_s)``: the key's new total in the current window, shared by every
    process on the same PostgreSQL database."""

    def __init__(self, engine: Engine) -> None:
        if engine.dialect.name != "postgresql":
            raise InvalidRequestError(
                "shared counters need the registry on PostgreSQL (MEDSERVE_STORE_URI); a SQLite "
                "home serves one machine, whose processes split a limit between them"
            )
        # autocommit: the one statement is the transaction (no BEGIN/COMMIT round trips)
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._transactional = engine  # add_within: one transaction, committed or rolled back
        self._sweep_at = 0.0

    def _sweep_due(self) -> bool:
        """Whether this process sweeps passed windows now (at most once per ``SWEEP_EVERY_S``)."""
        if time.monotonic() < self._sweep_at:
            return False
        self._sweep_at = time.monotonic() + SWEEP_EVERY_S
        return True

    def add(self, scope: str, key: str, window_s: float, amount: int = 1) -> tuple[int, float]:
        """Add ``amount`` to ``key``'s current window of ``window_s`` seconds; return the
        window's total after it and the seconds left in the window. A database error raises
        ``StoreError`` (the caller decides whether to fail open or closed)."""
        params = {"scope": scope, "key": key, "window": _window_ms(window_s), "amount": amount}
        with _connected(self.engine) as conn:
            total, until_ms, now_ms = conn.execute(_ADD, params).one()
            if self._sweep_due():
                conn.execute(_SWEEP)
        return int(total), max(0.0, (int(until_ms) - float(now_ms)) / 1000.0)

    def add_within(self, scope: str, counts: Sequence[Count]) -> tuple[list[Counted], int | None]:
        """Add every count in one transaction, or none: where a total would pass its limit,
        the transaction is rolled back and the index (in ``counts``) of the first such count
        is returned with the totals it would have had. Concurrent callers wait on the rows'
        locks until this one commits or rolls back, so a refused addition never makes another
        caller's fit look full, and together callers admit exactly up to each limit (three
        round trips: BEGIN, the statement, COMMIT or ROLLBACK). ``StoreError`` when the database
        does not answer."""
        keys = [c.key for c in counts]
        if len(set(keys)) != len(keys):
            raise InvalidRequestError("add_within counts each key once")
        params = {
            "scope": scope,
            "keys": keys,
            "wins": [_window_ms(c.window_s) for c in counts],
            "amounts": [int(c.amount) for c in counts],
        }
        with _connected(self._transactional) as conn:
            rows = {r[0]: r for r in conn.execute(_ADD_MANY, params).all()}
            counted = [
                Counted(
                    c.key,
                    int(rows[c.key][1]),
                    int(rows[c.key][2]),
                    max(0.0, (int(rows[c.key][3]) - float(rows[c.key][4])) / 1000.0),
                )
                for c in counts
            ]
            over = next(
                (
                    i
                    for i, (c, n) in enumerate(zip(counts, counted, strict=True))
                    if c.limit is not None and n.total > c.limit
                ),
                None,
            )
            if over is None:
                conn.commit()
            else:
                conn.rollback()
        if self._sweep_due():  # after the commit: its failure loses nothing
            with contextlib.suppress(SQLAlchemyError), self.engine.connect() as conn:
                conn.execute(_SWEEP)
        return counted, over

    def adjust(self, scope: str, changes: Sequence[tuple[str, int, float, int]]) -> None:
        """Add ``amount`` to each ``(key, window start ms, window_s, amount)``'s window (the
        start ``add_within`` returned: the window a reservation was counted in, though the
        current one may be later). One statement, rows locked in key order as ``add_within``
        locks them, so corrections and admissions of one key never deadlock."""
        params = {
            "scope": scope,
            "keys": [k for k, _, _, _ in changes],
            "starts": [s for _, s, _, _ in changes],
            "wins": [_window_ms(w) for _, _, w, _ in changes],
            "amounts": [a for _, _, _, a in changes],
        }
        with _connected(self.engine) as conn:
            conn.execute(_ADJUST, params)

    def peek(self, scope: str, keys: Sequence[tuple[str, float]]) -> list[int]:
        """The totals of each ``(key, window_s)``'s current window (0 where none), unchanged."""
        params = {
            "scope": scope,
            "keys": [k for k, _ in keys],
            "wins": [_window_ms(w) for _, w in keys],
        }
        with _connected(self.engine) as conn:
            totals = {str(k): int(t) for k, t in conn.execute(_PEEK, params).all()}
        return [totals[k] for k, _ in keys]

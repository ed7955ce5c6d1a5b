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

import math
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine
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
_SWEEP = sa.text(
    "DELETE FROM cluster_counters "
    "WHERE until_ms < (extract(epoch FROM clock_timestamp()) * 1000)::bigint"
)


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
        self._sweep_at = 0.0

    def add(self, scope: str, key: str, window_s: float, amount: int = 1) -> tuple[int, float]:
        """Add ``amount`` to ``key``'s current window of ``window_s`` seconds; return the
        window's total after it and the seconds left in the window. A database error raises
        ``StoreError`` (the caller decides whether to fail open or closed)."""
        window_ms = max(1, math.ceil(window_s * 1000))
        params = {"scope": scope, "key": key, "window": window_ms, "amount": amount}
        try:
            with self.engine.connect() as conn:
                total, until_ms, now_ms = conn.execute(_ADD, params).one()
                if time.monotonic() >= self._sweep_at:
                    self._sweep_at = time.monotonic() + SWEEP_EVERY_S
                    conn.execute(_SWEEP)
        except SQLAlchemyError as exc:
            raise StoreError(f"shared counter unavailable ({type(exc).__name__})") from exc
        return int(total), max(0.0, (int(until_ms) - float(now_ms)) / 1000.0)

"""Per-key budgets of language-model calls, shared by every worker process of a home.

The guard's request rate limit is per worker (a token bucket in memory, the rate split across
workers); a token budget cannot be split so (one worker may serve every long call). So the
counters live in a small SQLite file of the home (``MEDSERVE_HOME/llm/budgets.db``, WAL), one row
per (key, window kind, window start), changed in one short ``BEGIN IMMEDIATE`` transaction:

- ``admit`` checks requests per minute, tokens per minute and per day with the call's
  *reservation* (its prompt tokens plus its ``max_tokens``: a call cannot be stopped half-way
  for lack of budget, so it reserves the most it may use) and adds them;
- ``settle`` replaces the reservation by what the call used, in the windows it was admitted in,
  and adds the call to the per-key, per-day usage totals (``keys usage``, the usage endpoints).

Windows are fixed (the UTC minute, the UTC day): at a window's edge a key may spend up to twice
a minute's budget within a minute, as with any fixed-window limiter; the day is exact. Measured
on this machine (2 cores): admit + settle ≈ 0.04 ms together, one process, no contention
(tests/unit/llm/test_budgets_store.py prints it), against a generation that takes seconds.

The file is per home, i.e. per machine. Where the nodes of a deployment share the registry's
PostgreSQL and ``shared_rate_limits`` is on (the Ray backend; uvicorn servers on several
machines), ``SharedBudgetStore`` counts instead: the same windows as ``cluster_counters`` rows
(``core/store/counters.py``: one transaction per admission, windows from the database's clock),
the per-day usage in ``llm_usage``, so every node's calls count against one budget. When that
database does not answer, calls are refused (503 ``budget_unavailable``), not admitted on a
node's own count: a budget caps cost, and N nodes each spending a whole budget while PostgreSQL
fails over is the overspend it exists to prevent (the request rate limiter, a protection
against load, falls back to each replica's share instead). Nothing stored is text: key ids (a
digest in the counters), model names, counts.
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from medserve.core.errors import InvalidRequestError, MedserveError, RateLimitedError, StoreError
from medserve.core.store.counters import Count, SharedCounters, key_digest
from medserve.core.store.tables_llm import llm_usage

MINUTE = 60
DAY = 86_400
_CLEAN_EVERY = 500  # admissions between deletions of windows older than two days

LimitName = Literal["requests_per_minute", "tokens_per_minute", "tokens_per_day"]


class LlmSettings(BaseSettings):
    """Server-wide defaults of the language-model API (env ``MEDSERVE_LLM_*``); a key's own
    settings (``PUT /v1/security/keys/{id}/llm``) win where they are set. 0: no limit."""

    model_config = SettingsConfigDict(env_prefix="MEDSERVE_LLM_", extra="ignore")

    requests_per_minute: int = Field(default=0, ge=0, description="Calls per key per minute.")
    tokens_per_minute: int = Field(default=0, ge=0, description="Tokens per key per minute.")
    tokens_per_day: int = Field(default=0, ge=0, description="Tokens per key per UTC day.")
    max_tokens: int = Field(
        default=4096, ge=0, description="Most completion tokens one call may ask for."
    )
    max_context: int = Field(
        default=0, ge=0, description="Most prompt + completion tokens of one call (0: the model's)."
    )
    default_max_tokens: int = Field(
        default=256, ge=1, description="Completion tokens of a call that names no max_tokens."
    )
    holdback_chars: int = Field(
        default=128,
        ge=8,
        description=(
            "Most characters of a streamed answer held back: the trailing words that could "
            "still grow into an identifier are held until they cannot, so that an identifier "
            "split across chunks is redacted whole (a run longer than this may be cut)."
        ),
    )
    generation_threads: int = Field(
        default=4,
        ge=1,
        description=(
            "Threads that run generation calls, per worker (not the event loop's default "
            "executor: long generations would starve the store calls that share it)."
        ),
    )


@dataclass(frozen=True)
class Limits:
    """A key's limits; ``None``: none."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    max_tokens: int | None = None
    max_context: int | None = None

    @classmethod
    def defaults(cls, settings: LlmSettings) -> Limits:
        return cls(
            **{f.name: getattr(settings, f.name) or None for f in fields(cls)},
        )

    def over(self, key: Limits) -> Limits:
        """These limits with the key's own where it sets one."""
        own = {f.name: getattr(key, f.name) for f in fields(key)}
        return replace(self, **{k: v for k, v in own.items() if v is not None})


class BudgetExceededError(RateLimitedError):
    """429: a limit of the key is spent for now; ``limit`` names it, Retry-After says when."""

    code = "budget_exceeded"

    def __init__(self, limit: LimitName, value: int, retry_after_s: float) -> None:
        unit = "requests" if limit.startswith("requests") else "tokens"
        window = "minute" if limit.endswith("minute") else "day (UTC)"
        super().__init__(
            f"{limit} limit of {value} {unit} per {window} reached for this key; "
            f"retry after {max(1, round(retry_after_s + 0.5))} s",
            retry_after_s=retry_after_s,
        )
        self.limit = limit


class RequestOverLimitError(InvalidRequestError):
    """400: the call could never fit the key's limits, however long it waited."""

    code = "request_over_limit"

    def __init__(self, message: str, param: str, limit: str) -> None:
        super().__init__(message, details=[{"field": param, "rule": limit}])
        self.param = param
        self.limit = limit
        self.rule = limit  # which limit (the context's: key, version or model)


@dataclass(frozen=True)
class Reservation:
    key: str
    minute: int
    day: int
    tokens: int


@dataclass(frozen=True)
class UsageRow:
    key: str
    day: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


def check_request(
    limits: Limits,
    prompt_tokens: int,
    max_tokens: int,
    context: int,
    version_context: int | None = None,
    version: str = "this model version",
) -> None:
    """Refuse (400, naming the field and the limit) a call no budget can ever admit. The
    context allowed is the smallest of the key's ``max_context``, the version's own cap
    (``serving_config.max_context``: ``version_context``) and the model's context length."""
    if limits.max_tokens is not None and max_tokens > limits.max_tokens:
        raise RequestOverLimitError(
            f"max_tokens {max_tokens} is over this key's limit of {limits.max_tokens} per call",
            "max_tokens",
            "max_tokens",
        )
    caps = [
        (cap, rule, named)
        for cap, rule, named in (
            (context, "context_length", "the model's context length"),
            (version_context, "version_max_context", f"the max_context of {version}"),
            (limits.max_context, "key_max_context", "this key's max_context"),
        )
        if cap
    ]
    if caps:
        window, rule, named = min(caps, key=lambda c: c[0])
        if prompt_tokens + max_tokens > window:
            error = RequestOverLimitError(
                f"the prompt ({prompt_tokens} tokens) and max_tokens ({max_tokens}) exceed "
                f"{named} ({window} tokens): shorten the messages or lower max_tokens",
                "messages",
                "context_length_exceeded",
            )
            error.details = [{"field": "messages", "rule": rule, "limit": window}]
            error.rule = rule
            raise error
    reserved = prompt_tokens + max_tokens
    for name in ("tokens_per_minute", "tokens_per_day"):
        value = getattr(limits, name)
        if value is not None and reserved > value:
            raise RequestOverLimitError(
                f"this call reserves {reserved} tokens (prompt + max_tokens), more than this "
                f"key's {name} of {value}: lower max_tokens",
                "max_tokens",
                name,
            )


class VersionConfigError(MedserveError):
    """A version's serving config holds a limit medserve cannot read: refused, never guessed
    (500: the operator's to fix)."""

    code = "serving_config_invalid"


def version_context(config: Mapping[str, Any], model: str, version: object) -> int | None:
    """A version's own context cap (``serving_config["max_context"]``, tokens of prompt plus
    completion), applied on top of the key's ``max_context``; None when it sets none."""
    value = config.get("max_context")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise VersionConfigError(
            f"serving config of {model!r} version {version}: max_context must be a positive "
            "integer (tokens)"
        )
    return value


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` (created if missing) for the block."""
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class BudgetStore:
    """The counters (see the module docstring). Thread-safe; one per worker process."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._conn = sqlite3.connect(
            path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        self._admitted = 0
        # the workers of a server open the file at the same moment: switching it to WAL and
        # creating its tables take locks that SQLite's busy handler does not wait for (a worker
        # failed to start with "database is locked"), so the opening is serialised by a lock file
        with self._lock, _exclusive(path.with_name(path.name + ".lock")):
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(
                """
                CREATE TABLE IF NOT EXISTS windows (
                    key TEXT NOT NULL, kind TEXT NOT NULL, start INTEGER NOT NULL,
                    requests INTEGER NOT NULL, tokens INTEGER NOT NULL,
                    PRIMARY KEY (key, kind, start)) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS usage (
                    key TEXT NOT NULL, day TEXT NOT NULL, model TEXT NOT NULL,
                    requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
                    completion_tokens INTEGER NOT NULL,
                    PRIMARY KEY (key, day, model)) WITHOUT ROWID;
                """
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _window(conn: sqlite3.Connection, key: str, kind: str, start: int) -> tuple[int, int]:
        row = conn.execute(
            "SELECT requests, tokens FROM windows WHERE key = ? AND kind = ? AND start = ?",
            (key, kind, start),
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    @staticmethod
    def _add(
        conn: sqlite3.Connection, key: str, kind: str, start: int, requests: int, tokens: int
    ) -> None:
        conn.execute(
            "INSERT INTO windows (key, kind, start, requests, tokens) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (key, kind, start) DO UPDATE SET requests = requests + excluded.requests,"
            " tokens = tokens + excluded.tokens",
            (key, kind, start, requests, tokens),
        )

    def admit(self, key: str, limits: Limits, tokens: int, now: float | None = None) -> Reservation:
        """Count one call reserving ``tokens``, or raise ``BudgetExceededError`` naming the
        first limit it would break (nothing is counted then)."""
        now = time.time() if now is None else now
        minute = int(now // MINUTE) * MINUTE
        day = int(now // DAY) * DAY
        with self._transaction() as conn:
            m_requests, m_tokens = self._window(conn, key, "m", minute)
            _, d_tokens = self._window(conn, key, "d", day)
            to_minute = minute + MINUTE - now
            checks: list[tuple[LimitName, int | None, bool, float]] = [
                (
                    "requests_per_minute",
                    limits.requests_per_minute,
                    m_requests + 1 > (limits.requests_per_minute or 0),
                    to_minute,
                ),
                (
                    "tokens_per_minute",
                    limits.tokens_per_minute,
                    m_tokens + tokens > (limits.tokens_per_minute or 0),
                    to_minute,
                ),
                (
                    "tokens_per_day",
                    limits.tokens_per_day,
                    d_tokens + tokens > (limits.tokens_per_day or 0),
                    day + DAY - now,
                ),
            ]
            for name, value, over, retry in checks:
                if value is not None and over:
                    raise BudgetExceededError(name, value, retry)
            self._add(conn, key, "m", minute, 1, tokens)
            self._add(conn, key, "d", day, 1, tokens)
            self._admitted += 1
            if self._admitted % _CLEAN_EVERY == 0:
                conn.execute("DELETE FROM windows WHERE start < ?", (day - 2 * DAY,))
        return Reservation(key, minute, day, tokens)

    def settle(
        self, reservation: Reservation, model: str, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Replace the reservation by what the call used; add it to the key's usage."""
        used = prompt_tokens + completion_tokens
        delta = used - reservation.tokens
        day = datetime.fromtimestamp(reservation.day, UTC).date().isoformat()
        with self._transaction() as conn:
            if delta:
                self._add(conn, reservation.key, "m", reservation.minute, 0, delta)
                self._add(conn, reservation.key, "d", reservation.day, 0, delta)
            conn.execute(
                "INSERT INTO usage (key, day, model, requests, prompt_tokens, completion_tokens)"
                " VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (key, day, model) DO UPDATE SET"
                " requests = requests + 1, prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                " completion_tokens = completion_tokens + excluded.completion_tokens",
                (reservation.key, day, model, prompt_tokens, completion_tokens),
            )

    def usage(self, key: str | None = None, since: str | None = None) -> list[UsageRow]:
        """Usage per key, UTC day and model, oldest first (``since``: an ISO date)."""
        sql = "SELECT key, day, model, requests, prompt_tokens, completion_tokens FROM usage"
        where, args = [], []
        if key is not None:
            where.append("key = ?")
            args.append(key)
        if since is not None:
            where.append("day >= ?")
            args.append(since)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY day, key, model"
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [UsageRow(*row) for row in rows]

    def window(self, key: str, now: float | None = None) -> dict[str, int]:
        """What the key has used in the current minute and day (reservations included)."""
        now = time.time() if now is None else now
        with self._lock:
            m_requests, m_tokens = self._window(self._conn, key, "m", int(now // MINUTE) * MINUTE)
            d_requests, d_tokens = self._window(self._conn, key, "d", int(now // DAY) * DAY)
        return {
            "requests_this_minute": m_requests,
            "tokens_this_minute": m_tokens,
            "requests_today": d_requests,
            "tokens_today": d_tokens,
        }

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def budget_path(home: Path) -> Path:
    return Path(home) / "llm" / "budgets.db"


class Budgets(Protocol):
    """What the API needs of a budget store: ``BudgetStore`` (one machine) or
    ``SharedBudgetStore`` (a deployment's nodes over PostgreSQL)."""

    def admit(
        self, key: str, limits: Limits, tokens: int, now: float | None = None
    ) -> Reservation: ...

    def settle(
        self, reservation: Reservation, model: str, prompt_tokens: int, completion_tokens: int
    ) -> None: ...

    def usage(self, key: str | None = None, since: str | None = None) -> list[UsageRow]: ...

    def window(self, key: str, now: float | None = None) -> dict[str, int]: ...

    def close(self) -> None: ...


class BudgetUnavailableError(StoreError):
    """503: the shared budgets' database does not answer; the call is refused, not admitted
    on one node's count (see the module docstring)."""

    code = "budget_unavailable"

    def __init__(self, cause: Exception) -> None:
        super().__init__(
            "language-model budgets are unavailable (their shared database does not answer); "
            f"retry shortly ({type(cause).__name__})"
        )


BUDGET_SCOPE = "llm"
# the counters of a key: (kind, window seconds); requests and tokens of its minute and its day
_KINDS: tuple[tuple[str, int], ...] = (("mr", MINUTE), ("mt", MINUTE), ("dr", DAY), ("dt", DAY))


class SharedBudgetStore:
    """The budgets of every node of a deployment, in the registry's PostgreSQL: the windows are
    ``cluster_counters`` rows (scope ``llm``, the key as a digest), added to in one transaction
    that is rolled back when a limit would be passed; usage per day in ``llm_usage``. ``now``
    arguments are ignored: windows follow the database's clock, which every node shares."""

    def __init__(self, engine: Engine) -> None:
        self.counters = SharedCounters(engine)  # refuses anything but PostgreSQL
        self.engine = self.counters.engine  # autocommit: each write is one statement

    @staticmethod
    def _ids(key: str) -> list[str]:
        digest = key_digest(key)
        return [f"{kind}:{digest}" for kind, _ in _KINDS]

    def admit(self, key: str, limits: Limits, tokens: int, now: float | None = None) -> Reservation:
        """As ``BudgetStore.admit``, for the whole deployment; ``BudgetUnavailableError`` (503)
        when the database does not answer."""
        m_requests, m_tokens, d_requests, d_tokens = self._ids(key)
        counts = [  # the order of the checks: the first limit passed is the one named
            Count(m_requests, MINUTE, 1, limits.requests_per_minute),
            Count(m_tokens, MINUTE, tokens, limits.tokens_per_minute),
            Count(d_tokens, DAY, tokens, limits.tokens_per_day),
            Count(d_requests, DAY, 1),
        ]
        names: tuple[LimitName, ...] = (
            "requests_per_minute",
            "tokens_per_minute",
            "tokens_per_day",
        )
        try:
            counted, over = self.counters.add_within(BUDGET_SCOPE, counts)
        except StoreError as exc:
            raise BudgetUnavailableError(exc) from exc
        if over is not None:
            limit = counts[over].limit
            assert limit is not None  # only a count with a limit is ever over
            raise BudgetExceededError(names[over], limit, max(counted[over].left_s, 0.001))
        return Reservation(key, counted[1].start_ms // 1000, counted[2].start_ms // 1000, tokens)

    def settle(
        self, reservation: Reservation, model: str, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """As ``BudgetStore.settle``: the windows admitted in get what was used instead of the
        reservation; the day's usage row (the admission's UTC day) gets the call."""
        _, m_tokens, _, d_tokens = self._ids(reservation.key)
        delta = prompt_tokens + completion_tokens - reservation.tokens
        if delta:
            self.counters.adjust(
                BUDGET_SCOPE,
                [
                    (m_tokens, reservation.minute * 1000, MINUTE, delta),
                    (d_tokens, reservation.day * 1000, DAY, delta),
                ],
            )
        day = datetime.fromtimestamp(reservation.day, UTC).date()
        insert = pg_insert(llm_usage).values(
            key_id=reservation.key,
            day=day,
            model=model,
            requests=1,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        upsert = insert.on_conflict_do_update(
            index_elements=[llm_usage.c.key_id, llm_usage.c.day, llm_usage.c.model],
            set_={
                "requests": llm_usage.c.requests + 1,
                "prompt_tokens": llm_usage.c.prompt_tokens + insert.excluded.prompt_tokens,
                "completion_tokens": llm_usage.c.completion_tokens
                + insert.excluded.completion_tokens,
            },
        )
        try:
            with self.engine.connect() as conn:
                conn.execute(upsert)
        except SQLAlchemyError as exc:
            raise StoreError(f"language-model usage not recorded ({type(exc).__name__})") from exc

    def usage(self, key: str | None = None, since: str | None = None) -> list[UsageRow]:
        """As ``BudgetStore.usage``: every node's calls, per key, UTC day and model."""
        t = llm_usage.c
        query = sa.select(
            t.key_id, t.day, t.model, t.requests, t.prompt_tokens, t.completion_tokens
        ).order_by(t.day, t.key_id, t.model)
        if key is not None:
            query = query.where(t.key_id == key)
        if since is not None:
            query = query.where(t.day >= date.fromisoformat(since))
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"language-model usage unavailable ({type(exc).__name__})") from exc
        return [
            UsageRow(str(k), d.isoformat(), str(m), int(r), int(p), int(c))
            for k, d, m, r, p, c in rows
        ]

    def window(self, key: str, now: float | None = None) -> dict[str, int]:
        """What the key has used in the current minute and day, on every node."""
        ids = self._ids(key)
        m_requests, m_tokens, d_requests, d_tokens = self.counters.peek(
            BUDGET_SCOPE, [(i, w) for i, (_, w) in zip(ids, _KINDS, strict=True)]
        )
        return {
            "requests_this_minute": m_requests,
            "tokens_this_minute": m_tokens,
            "requests_today": d_requests,
            "tokens_today": d_tokens,
        }

    def close(self) -> None:
        """The engine is the registry's: its owner disposes of it."""


def open_budgets(home: Path, engine: Engine | None, shared: bool) -> Budgets:
    """The shared store where ``shared`` (the setting ``shared_rate_limits``) and the registry
    is on PostgreSQL; else the home's SQLite file, as on one machine."""
    if shared and engine is not None and engine.dialect.name == "postgresql":
        return SharedBudgetStore(engine)
    return BudgetStore(budget_path(home))

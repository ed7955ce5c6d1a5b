"""Failed authentication, audited per source and minute instead of one entry per request.

A request refused because its caller could not be authenticated (401: no credential, or one that
is unknown, expired, revoked or malformed) tells the trail little one entry at a time, and a
flood of them (a scanner, a misconfigured client) would grow the trail and the journal with
rows that name nobody. So both refusal paths (the security middleware and the prediction fast
path) only *count* it here, per (source address, minute, route-coarse path, reason), on the
event loop, O(1): the refusal is answered at once and never waits for the trail. When a minute
closes (a timer on the server's event loop, as ``AuditLog.drive`` schedules its slices; no
thread), each of its groups becomes one ``auth_failed`` entry through ``AuditLog.enqueue``
(journaled there before it is queued). The open groups are written when the server stops.

Bounded: at most ``max_groups`` open groups; beyond that, further sources are counted in one
group per minute, path and reason whose source reads ``other sources``, so that requests from
many addresses cannot grow memory.

Durability: the counts of a minute that has not closed live in this process's memory only, so a
``kill -9`` (or a power cut) loses at most a minute of failed-authentication counts per worker
(never an acknowledged prediction, whose entry is journaled before its answer). Each worker
counts its own requests: with several workers, one source's failures of a minute may be in one
entry per worker.

Nothing a caller chose is kept verbatim: the path is reduced to medserve's own route words
(``coarse_path``), the reason is one of two codes, and the caller's request id and patient
header are not kept at all (an unauthenticated request's headers are anyone's text).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from medserve.core.audit import AuditEntry, AuditLog
from medserve.core.errors import MedserveError
from medserve.features.security.guard import credential_from_headers

log = logging.getLogger(__name__)

ACTION = "auth_failed"
MAX_GROUPS = 10_000
OTHER_SOURCES = "other sources"
UNKNOWN_SOURCE = "unknown"
MISSING = "missing_credential"
INVALID = "invalid_credential"  # unknown, expired, revoked or malformed: the guard never says
_MINUTE_S = 60
_AFTER_CLOSE_S = 0.05  # fire just after the minute boundary, not just before it

# The words of medserve's own routes that may stand in a coarse path: anything else in an
# unauthenticated URL (a model name, a patient's name pasted in a path) is anyone's text.
_ROOTS = frozenset(
    {"v1", "v2", "cds-services", "fhir", "openai", "ui", "docs", "redoc", "metrics"}
    | {"openapi.json"}
)
_SECOND = frozenset(
    {"models", "audit", "alerts", "outcomes", "patients", "security", "served", "health"}
    | {"monitoring", "drift", "keys", "tenants", "chat", "completions", "embeddings"}
)

GroupKey = tuple[int, str, str, str]  # (minute since the epoch, source, coarse path, reason)


def coarse_path(path: str) -> str:
    """The path kept to its first two segments, each only where it is one of medserve's route
    words (``/v1/models/…``, ``/…``): a refused caller's URL may hold any text."""
    parts = path.split("/")
    kept: list[str] = []
    if len(parts) > 1 and parts[1] in _ROOTS:
        kept.append(parts[1])
        if len(parts) > 2 and parts[2] in _SECOND:
            kept.append(parts[2])
    whole = len(kept) == len(parts) - 1
    return "/" + "/".join(kept) + ("" if whole else ("/…" if kept else "…"))


def auth_failure_reason(headers: list[tuple[bytes, bytes]]) -> str:
    """``missing_credential`` or ``invalid_credential``: which, the headers say; why a credential
    was refused is not told (to the caller or the trail)."""
    return MISSING if credential_from_headers(headers) is None else INVALID


def _hhmm(minute: int) -> str:
    return datetime.fromtimestamp(minute * _MINUTE_S, UTC).strftime("%H:%M")


class AuthFailures:
    """Counts failed authentication per (source, minute, coarse path, reason) and writes one
    ``auth_failed`` entry per group once its minute is over (see the module docstring)."""

    def __init__(
        self,
        audit: AuditLog,
        *,
        max_groups: int = MAX_GROUPS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.audit = audit
        self.max_groups = max_groups
        self.clock = clock
        self._groups: dict[GroupKey, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def __len__(self) -> int:
        """Open groups (bounded by ``max_groups`` plus the overflow groups)."""
        return len(self._groups)

    def count(self, source: str | None, path: str, reason: str) -> None:
        """One refused request; on the event loop, O(1), never raises into the refusal."""
        key = (int(self.clock() // _MINUTE_S), source or UNKNOWN_SOURCE, path, reason)
        groups = self._groups
        if key not in groups and len(groups) >= self.max_groups:
            key = (key[0], OTHER_SOURCES, path, reason)
        groups[key] = groups.get(key, 0) + 1

    def drive(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write each minute's groups just after it closes, on ``loop`` (call from it)."""
        self._loop = loop
        self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        delay = _MINUTE_S - self.clock() % _MINUTE_S + _AFTER_CLOSE_S
        self._timer = self._loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        if self._closed:
            return
        try:
            self.flush(before_minute=int(self.clock() // _MINUTE_S))
        except Exception as exc:  # keep ticking: the next minutes still matter
            log.error("failed-authentication audit: %s", type(exc).__name__)
        self._schedule()

    def flush(self, before_minute: int | None = None) -> int:
        """Write the groups of minutes before ``before_minute`` (every open group: None), one
        entry each; returns how many. A group the trail cannot take now stays open for the next
        try (at shutdown it is logged as lost, by count)."""
        closed = sorted(k for k in self._groups if before_minute is None or k[0] < before_minute)
        written = 0
        for key in closed:
            try:
                self.audit.enqueue(self._entry(key, self._groups[key]))
            except MedserveError as exc:  # queue full or journal down (fail closed): retry later
                log.error("failed-authentication audit: could not queue: %s", exc.code)
                break
            del self._groups[key]
            written += 1
        return written

    @staticmethod
    def _entry(key: GroupKey, count: int) -> AuditEntry:
        minute, source, path, reason = key
        window = f"between {_hhmm(minute)} and {_hhmm(minute + 1)} UTC"
        noun = "request" if count == 1 else "requests"
        return AuditEntry(
            actor="unauthenticated",
            action=ACTION,
            outcome=401,
            client=source,
            detail=f"{count} {noun} refused: {reason} on {path} {window}",
        )

    def close(self) -> None:
        """Stop the timer and write every open group (before the audit log closes)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self._groups:
            lost = sum(self._groups.values())
            log.error("failed-authentication audit: %d refused requests not recorded", lost)
            self._groups.clear()

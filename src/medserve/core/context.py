"""Per-request facts that travel from the transport into the data plane and its observers."""

from __future__ import annotations

import hashlib
import hmac
import random
import time
from dataclasses import dataclass, field
from typing import Any


def now_us() -> int:
    return time.time_ns() // 1000


def new_request_id(at_us: int | None = None) -> str:
    """Microseconds since the epoch (``at_us``, default now; 13 hex digits) then 48 random bits.

    Time first, so that the prediction log finds a prediction by its id through a time window
    (an index range) instead of an index of every id. The random part keeps ids unique across
    workers; the time carries no patient data.
    """
    return f"{now_us() if at_us is None else at_us:013x}{random.getrandbits(48):012x}"


def made_request_id() -> tuple[str, int]:
    """A new request id and the time in it (µs), for ``RequestContext.id_time_us``."""
    made = now_us()
    return new_request_id(made), made


def request_id_time_us(request_id: str) -> int | None:
    """The time ``new_request_id`` put in ``request_id`` (µs since the epoch); None where the
    id has another form (a caller's own ``X-Request-ID``, unless it happens to look the same:
    the prediction log checks the time against the log time before relying on it)."""
    if len(request_id) != 25:
        return None
    try:
        return int(request_id[:13], 16)
    except ValueError:
        return None


def stored_request_id(request_id: str, made_us: int | None, salt: bytes) -> str:
    """The form of a request id that stores keep: medserve's own ids (``made_us`` set: a time
    and random bits) as they are; a caller's ``X-Request-ID`` — any text, an order or encounter
    number included — only as a keyed hash (``rid_...``), computed again to find it."""
    if made_us is not None:
        return request_id
    return "rid_" + hmac.new(salt, request_id.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``anonymous`` only when security is off (``medserve demo``)."""

    subject: str
    kind: str = "anonymous"  # anonymous | api_key | jwt
    key_id: str | None = None
    roles: frozenset[str] = frozenset()
    tenant: str | None = None
    models: frozenset[str] | None = None  # None: every model the roles allow
    claims: dict[str, Any] = field(default_factory=dict)


ANONYMOUS = Principal(subject="anonymous", roles=frozenset({"admin"}))
# Where the authenticated Principal of an HTTP request is kept in its ASGI scope (set by the guard;
# read by the fast path and the routes, so a request is authenticated once).
PRINCIPAL_SCOPE_KEY = "medserve.principal"


@dataclass(frozen=True)
class RequestContext:
    """``patient_id`` is the raw identifier as the caller sent it (header ``X-Patient-ID``): it
    must never be stored or logged as is; observers keep a salted hash at most."""

    request_id: str
    protocol: str = "python"
    principal: Principal = ANONYMOUS
    client: str | None = None
    patient_id: str | None = None
    site: str | None = None
    explain: bool = False
    # The time medserve put in ``request_id`` when it made the id (µs); None for a caller's own
    # id. Saves the prediction log parsing every id to learn whether it carries its time.
    id_time_us: int | None = None
    # One patient per input row, where one request scores several (a FHIR Bundle of several
    # Patients): raw like ``patient_id``; the prediction log pseudonymizes each row's own.
    patient_ids: tuple[str, ...] | None = None


def local_context(protocol: str = "python") -> RequestContext:
    request_id, made = made_request_id()
    return RequestContext(request_id=request_id, protocol=protocol, id_time_us=made)

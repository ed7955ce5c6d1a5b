"""Console sessions: a signed-in browser, stored in the database so that every worker knows it.

Signing in proves an API key once (through the security guard, as any API call would); the
browser then holds a random session token in an HttpOnly cookie. The database keeps only the
SHA-256 of that token and the id of the key it acts as, never the key or the token, so a copy
of the database opens no session. Each request re-reads the key (``SecurityGuard
.principal_for_key``): a key revoked or expired ends its sessions at once, on every worker.

CSRF: every form carries a token derived from the session token (an HMAC of it), which a
cross-site page cannot read or compute; the cookie is also ``SameSite=Strict``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from medserve.core.store.tables_console import console_sessions
from medserve.core.store.unit_of_work import UnitOfWork

COOKIE = "medserve_session"
LOGIN_COOKIE = "medserve_login_csrf"  # double-submit token of the sign-in form (before a session)
SESSION_HOURS = 8  # a working shift; a session never outlives its key either


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session's forms: an HMAC of the session token (nothing stored)."""
    return hmac.new(session_token.encode(), b"medserve-console-csrf", hashlib.sha256).hexdigest()


def csrf_ok(session_token: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(csrf_token(session_token), str(sent))


@dataclass(frozen=True)
class Session:
    key_id: str
    created_at: datetime
    expires_at: datetime


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SessionStore:
    """Sessions on the registry's engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.uow = UnitOfWork(engine, "console sessions")

    def open(self, key_id: str, key_expires_at: datetime | None) -> tuple[str, Session]:
        """A new session for ``key_id``: the token (for the cookie only) and the session."""
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        ends = now + timedelta(hours=SESSION_HOURS)
        if key_expires_at is not None:
            ends = min(ends, _utc(key_expires_at))
        with self.uow.write() as conn:
            conn.execute(console_sessions.delete().where(console_sessions.c.expires_at <= now))
            conn.execute(
                console_sessions.insert().values(
                    token_sha256=token_sha256(token), key_id=key_id, created_at=now, expires_at=ends
                )
            )
        return token, Session(key_id, now, ends)

    def find(self, token: str) -> Session | None:
        """The live session of ``token``, or None (unknown, signed out, or past its end)."""
        with self.uow.read() as conn:
            row = (
                conn.execute(
                    sa.select(console_sessions).where(
                        console_sessions.c.token_sha256 == token_sha256(token)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        session = Session(row["key_id"], _utc(row["created_at"]), _utc(row["expires_at"]))
        return session if session.expires_at > datetime.now(UTC) else None

    def close(self, token: str) -> None:
        """Sign out: the session is gone on every worker."""
        with self.uow.write() as conn:
            conn.execute(
                console_sessions.delete().where(
                    console_sessions.c.token_sha256 == token_sha256(token)
                )
            )

    def close_key(self, key_id: str) -> int:
        """End every session of a key (its key was revoked or expired); how many ended."""
        with self.uow.write() as conn:
            result = conn.execute(
                console_sessions.delete().where(console_sessions.c.key_id == key_id)
            )
        return int(result.rowcount or 0)

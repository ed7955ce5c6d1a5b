"""API keys, model tenants and the security change counter, on the registry database.

A key is ``msk_<id>_<secret>``: 12 hex characters of id (the lookup prefix, shown in listings
and the audit trail) and 256 random bits of secret. Only SHA-256 of the secret is stored. A slow
password hash is not needed: the secret is random, not chosen by a person, so it cannot be
guessed from a dictionary, and SHA-256 keeps verification in microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import mmap
import os
import secrets
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping

from medserve.core.errors import InvalidRequestError, NotFoundError
from medserve.core.store.outbox import record_change
from medserve.core.store.tables_security import (
    sec_api_keys,
    sec_key_llm,
    sec_model_tenants,
    sec_state,
)
from medserve.core.store.unit_of_work import UnitOfWork
from medserve.features.security.permissions import ROLES

TOKEN_PREFIX = "msk_"
_ID_HEX = 12


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    key_id, sep, secret = token[len(TOKEN_PREFIX) :].partition("_")
    if not sep or len(key_id) != _ID_HEX or len(secret) < 32:
        return None
    return key_id, secret


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    roles: tuple[str, ...]
    models: tuple[str, ...] | None
    tenant: str | None
    rate_limit: int | None
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def state(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class IssuedKey:
    """A new key and its token; the token is shown once and never stored."""

    key: ApiKey
    token: str


PHI_POLICIES = ("allow", "redact", "block")


@dataclass(frozen=True)
class KeyLlmSettings:
    """A key's settings for language models. ``None`` means "the server's default" (a limit) or
    "the model's policy" (``phi_policy``); ``phi_allow`` is the explicit grant without which a
    policy of ``allow`` is applied as ``redact``."""

    phi_policy: str | None = None
    phi_allow: bool = False
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    max_tokens: int | None = None
    max_context: int | None = None

    def validated(self) -> KeyLlmSettings:
        if self.phi_policy is not None and self.phi_policy not in PHI_POLICIES:
            raise InvalidRequestError(
                f"phi_policy must be one of {', '.join(PHI_POLICIES)} (or null for the model's)"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            limit = f.name.startswith(("requests_", "tokens_", "max_"))
            if limit and value is not None and (type(value) is not int or value <= 0):
                raise InvalidRequestError(f"{f.name} must be a positive integer (or null)")
        return self


def _key(row: RowMapping) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        roles=tuple(row["roles"]),
        models=tuple(row["models"]) if row["models"] is not None else None,
        tenant=row["tenant"],
        rate_limit=row["rate_limit"],
        created_by=row["created_by"],
        created_at=_utc(row["created_at"]) or datetime.now(UTC),
        expires_at=_utc(row["expires_at"]),
        revoked_at=_utc(row["revoked_at"]),
    )


def _bump_counter(conn: Connection) -> None:
    conn.execute(
        sec_state.update().where(sec_state.c.id == 1).values(counter=sec_state.c.counter + 1)
    )


class SecurityStore:
    """Keys and tenants on the registry's engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.uow = UnitOfWork(engine, "security")

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A change of keys or tenants: bumps the security counter in the same transaction, and
        the generation file after the commit (workers' caches then drop what changed)."""
        with self.uow.write(_bump_counter) as conn:
            yield conn
        generation = generation_file(self.engine)  # after the commit: readers then see it
        if generation is not None:
            generation.bump()

    def counter(self) -> int:
        with self.uow.read() as conn:
            value = conn.execute(
                sa.select(sec_state.c.counter).where(sec_state.c.id == 1)
            ).scalar_one()
        return int(value)

    # -- keys -------------------------------------------------------------------------------
    def create_key(
        self,
        name: str,
        roles: list[str],
        *,
        models: list[str] | None = None,
        tenant: str | None = None,
        expires_in: timedelta | None = None,
        rate_limit: int | None = None,
        created_by: str = "cli",
    ) -> IssuedKey:
        unknown = sorted(set(roles) - set(ROLES))
        if not roles or unknown:
            raise InvalidRequestError(
                f"unknown or missing roles {unknown}; choose from {', '.join(ROLES)}"
            )
        if rate_limit is not None and rate_limit <= 0:
            raise InvalidRequestError("rate_limit must be a positive number of requests/second")
        key_id = secrets.token_hex(_ID_HEX // 2)
        secret = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        values = {
            "key_id": key_id,
            "secret_sha256": secret_sha256(secret),
            "name": name,
            "roles": sorted(set(roles)),
            "models": sorted(set(models)) if models else None,
            "tenant": tenant or None,
            "rate_limit": rate_limit,
            "created_by": created_by,
            "created_at": now,
            "expires_at": now + expires_in if expires_in is not None else None,
            "revoked_at": None,
        }
        with self._write() as conn:
            conn.execute(sec_api_keys.insert().values(**values))
            detail = f"key {key_id} roles={','.join(sorted(set(roles)))} tenant={tenant or '-'}"
            record_change(conn, "security.key_created", "-", actor=created_by, reason=detail)
        return IssuedKey(_key(values), f"{TOKEN_PREFIX}{key_id}_{secret}")  # type: ignore[arg-type]

    def list_keys(self) -> list[ApiKey]:
        with self.uow.read() as conn:
            rows = conn.execute(sa.select(sec_api_keys).order_by(sec_api_keys.c.created_at))
            return [_key(r) for r in rows.mappings()]

    def revoke_key(self, key_id: str, *, actor: str = "cli") -> ApiKey:
        """Revoke a key; the audit entry is written with the change (the outbox), whoever
        revokes it (the HTTP API, the CLI, a script)."""
        key_id = key_id.removeprefix(TOKEN_PREFIX).split("_", 1)[0]
        with self._write() as conn:
            row = (
                conn.execute(sa.select(sec_api_keys).where(sec_api_keys.c.key_id == key_id))
                .mappings()
                .first()
            )
            if row is None:
                raise NotFoundError(f"no API key with id {key_id!r}")
            if row["revoked_at"] is None:
                conn.execute(
                    sec_api_keys.update()
                    .where(sec_api_keys.c.key_id == key_id)
                    .values(revoked_at=datetime.now(UTC))
                )
                record_change(
                    conn, "security.key_revoked", "-", actor=actor, reason=f"key {key_id}"
                )
            row = (
                conn.execute(sa.select(sec_api_keys).where(sec_api_keys.c.key_id == key_id))
                .mappings()
                .one()
            )
        return _key(row)

    def verify_key(self, token: str) -> ApiKey | None:
        """The active key for ``token``, or None (unknown, wrong secret, revoked, expired)."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        with self.uow.read() as conn:
            row = (
                conn.execute(sa.select(sec_api_keys).where(sec_api_keys.c.key_id == key_id))
                .mappings()
                .first()
            )
        if row is None or not hmac.compare_digest(row["secret_sha256"], secret_sha256(secret)):
            return None
        key = _key(row)
        return key if key.state() == "active" else None

    # -- language-model settings -------------------------------------------------------------
    def llm_settings(self, key_id: str) -> KeyLlmSettings:
        """The key's language-model settings (the defaults where none were set)."""
        with self.uow.read() as conn:
            row = (
                conn.execute(sa.select(sec_key_llm).where(sec_key_llm.c.key_id == key_id))
                .mappings()
                .first()
            )
        if row is None:
            return KeyLlmSettings()
        return KeyLlmSettings(**{f.name: row[f.name] for f in fields(KeyLlmSettings)})

    def set_llm_settings(
        self, key_id: str, settings: KeyLlmSettings, *, actor: str = "cli"
    ) -> KeyLlmSettings:
        """Replace the key's language-model settings, audited with the change (the outbox);
        every worker applies them from its next request (the security counter)."""
        settings = settings.validated()
        key_id = key_id.removeprefix(TOKEN_PREFIX).split("_", 1)[0]
        values = {f.name: getattr(settings, f.name) for f in fields(KeyLlmSettings)}
        with self._write() as conn:
            found = conn.execute(
                sa.select(sec_api_keys.c.key_id).where(sec_api_keys.c.key_id == key_id)
            ).first()
            if found is None:
                raise NotFoundError(f"no API key with id {key_id!r}")
            conn.execute(sec_key_llm.delete().where(sec_key_llm.c.key_id == key_id))
            conn.execute(
                sec_key_llm.insert().values(
                    key_id=key_id, updated_by=actor, updated_at=datetime.now(UTC), **values
                )
            )
            detail = " ".join(f"{k}={'-' if v is None else v}" for k, v in values.items())
            record_change(
                conn, "security.key_llm_settings", "-", actor=actor, reason=f"key {key_id} {detail}"
            )
        return settings

    # -- tenants ----------------------------------------------------------------------------
    def set_model_tenant(self, model: str, tenant: str | None, *, actor: str = "cli") -> None:
        """Assign ``model`` to ``tenant`` (None: no tenant), audited with the change."""
        with self._write() as conn:
            conn.execute(sec_model_tenants.delete().where(sec_model_tenants.c.model_name == model))
            if tenant:
                conn.execute(sec_model_tenants.insert().values(model_name=model, tenant=tenant))
            record_change(
                conn,
                "security.tenant_assigned",
                model,
                actor=actor,
                reason=f"tenant={tenant or '-'}",
            )

    def model_tenants(self) -> dict[str, str]:
        with self.uow.read() as conn:
            rows = conn.execute(sa.select(sec_model_tenants)).mappings()
            return {r["model_name"]: r["tenant"] for r in rows}


class GenerationFile:
    """An 8-byte counter in a file next to the SQLite database, memory-mapped by every process.

    Bumped after each committed security change; read on every request for a fraction of a
    microsecond (a SQL read of the counter row cost tens of microseconds under write load).
    """

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 8:
                os.pwrite(fd, b"\0" * 8, 0)
            self._map = mmap.mmap(fd, 8)
        finally:
            os.close(fd)
        self._lock = threading.Lock()

    def read(self) -> int:
        value: int = struct.unpack_from("<Q", self._map, 0)[0]
        return value

    def bump(self) -> None:
        # Readers only compare for inequality: a lost increment between two processes still
        # changes the value, so no cross-process lock is needed.
        with self._lock:
            struct.pack_into("<Q", self._map, 0, (self.read() + 1) % 2**64)


_GENERATIONS: dict[str, GenerationFile] = {}
_GENERATIONS_LOCK = threading.Lock()


def generation_file(engine: Engine) -> GenerationFile | None:
    """The generation file of a SQLite database file (None for other databases)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = str(Path(str(url.database)).resolve()) + ".security-generation"
    with _GENERATIONS_LOCK:
        found = _GENERATIONS.get(path)
        if found is None:
            found = _GENERATIONS[path] = GenerationFile(Path(path))
        return found


class ChangeCounter:
    """The security change counter, read cheaply enough to do it on every request.

    SQLite (one machine): the memory-mapped generation file that every security change bumps
    after its commit, so a revocation by any process (CLI, another worker) is seen by the very
    next request in every worker; a daemon thread re-reads the counter row every ``db_check_s``
    as a safety net (a change made by a tool that bypasses medserve). Not on the request: a SQL
    read on the event loop, once a second, stalled it for milliseconds under load.
    Other databases: the daemon thread polls every ``poll_s`` and ``read`` returns the last value.
    """

    def __init__(self, store: SecurityStore, poll_s: float = 0.5, db_check_s: float = 1.0) -> None:
        self._store = store
        self._file = generation_file(store.engine)
        self._value = store.counter()
        self._stop = threading.Event()
        every = poll_s if self._file is None else db_check_s
        self._thread = threading.Thread(
            target=self._poll, args=(every,), name="medserve-security-poll", daemon=True
        )
        self._thread.start()

    def _poll(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                self._value = self._store.counter()
            except Exception:  # the database is briefly unreachable: keep the last value
                time.sleep(poll_s)

    def read(self) -> int:
        if self._file is None:
            return self._value
        return self._file.read() * 2**40 + self._value

    def close(self) -> None:
        self._stop.set()

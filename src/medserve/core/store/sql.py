"""The registry store on SQLAlchemy: embedded SQLite (default) or PostgreSQL, same code.

SQLite specifics, because several server processes share one file: WAL journal (readers never
block the writer), a busy timeout, foreign keys on, ``secure_delete`` on (deleted content is
zeroed, see docs/privacy.md), and write transactions opened with
``BEGIN IMMEDIATE`` so that two writers queue on the lock instead of failing on a lock upgrade.
Version numbers come from a per-model counter updated inside the creating transaction, which
serialises concurrent registrations on both backends.
"""

from __future__ import annotations

import base64
import re
import sqlite3
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from medserve.core.errors import (
    AliasNotFoundError,
    AlreadyExistsError,
    InvalidRequestError,
    ModelNotFoundError,
    StoreError,
    VersionNotFoundError,
)
from medserve.core.registry.entities import AliasEvent, ModelVersion, Page, RegisteredModel
from medserve.core.store.base import RegistryStore
from medserve.core.store.outbox import record_change
from medserve.core.store.schema import (
    alias_events,
    aliases,
    model_versions,
    registered_models,
    registry_state,
)
from medserve.core.store.unit_of_work import UnitOfWork

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ALIAS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
MAX_PAGE = 1000
SQLITE_BUSY_TIMEOUT_S = 30


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _check_model_name(name: str) -> None:
    if not isinstance(name, str) or not MODEL_NAME.match(name):
        raise InvalidRequestError(
            f"invalid model name {name!r}: use 1-128 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )


def _check_alias(alias: str) -> None:
    if not isinstance(alias, str) or not ALIAS_NAME.match(alias):
        raise InvalidRequestError(
            f"invalid alias {alias!r}: use lowercase letters, digits, '_' or '-', "
            "starting with a letter (a number would be read as a version)"
        )


def _check_page(page_size: int) -> None:
    if not 1 <= page_size <= MAX_PAGE:
        raise InvalidRequestError(f"page_size must be between 1 and {MAX_PAGE}")


def _encode_token(*parts: Any) -> str:
    return base64.urlsafe_b64encode("\x1f".join(map(str, parts)).encode()).decode()


def _decode_token(token: str, n: int) -> list[str]:
    try:
        raw = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        parts = raw.decode().split("\x1f")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError("invalid page_token") from exc
    if len(parts) != n:
        raise InvalidRequestError("invalid page_token")
    return parts


def _model(row: RowMapping) -> RegisteredModel:
    return RegisteredModel(
        name=row["name"],
        description=row["description"],
        tags=dict(row["tags"] or {}),
        created_by=row["created_by"],
        created_at=_utc(row["created_at"]),
        updated_at=_utc(row["updated_at"]),
    )


def _version(row: RowMapping) -> ModelVersion:
    return ModelVersion(
        model_name=row["model_name"],
        version=row["version"],
        artifact_sha256=row["artifact_sha256"],
        artifact_filename=row["artifact_filename"],
        flavor=row["flavor"],
        runtime=row["runtime"],
        runtime_reason=row["runtime_reason"],
        source_flavor=row["source_flavor"],
        source_artifact_sha256=row["source_artifact_sha256"],
        library_versions=dict(row["library_versions"] or {}),
        signature=dict(row["signature"] or {}),
        tags=dict(row["tags"] or {}),
        serving_config=dict(row["serving_config"] or {}),
        description=row["description"],
        created_by=row["created_by"],
        created_at=_utc(row["created_at"]),
    )


def _event(row: RowMapping) -> AliasEvent:
    return AliasEvent(
        id=row["id"],
        model_name=row["model_name"],
        alias=row["alias"],
        from_version=row["from_version"],
        to_version=row["to_version"],
        actor=row["actor"],
        reason=row["reason"],
        at=_utc(row["at"]),
    )


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """Switch a database file to WAL once; later connections find it already set.

    Changing the journal mode needs an exclusive lock and SQLite answers "database is locked"
    at once instead of waiting (the busy handler is not used for it), so several workers
    opening a fresh file together retry here for as long as the busy timeout allows.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def create_engine_for(uri: str) -> Engine:
    if uri.startswith("sqlite"):
        in_memory = sa.engine.make_url(uri).database in (None, "", ":memory:")
        engine = sa.create_engine(
            uri,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
            # An in-memory database lives in one connection: share it, or each would be empty.
            poolclass=sa.pool.StaticPool if in_memory else None,
            hide_parameters=True,  # errors and logs never carry the values (request ids, ...)
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # Deleted rows are overwritten with zeros, not left in free pages and free space
            # (a patient's erasure must not leave bytes readable in the file: docs/privacy.md).
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("medserve_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    return sa.create_engine(uri, pool_pre_ping=True, hide_parameters=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest alembic revision (idempotent, safe to race)."""
    from alembic import command  # noqa: PLC0415 (heavy: alembic, kept off the serving path)
    from alembic.config import Config  # noqa: PLC0415 (heavy: alembic, kept off the serving path)

    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("medserve.core.store") / "migrations")
    )
    with engine.connect().execution_options(medserve_write=True) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727001)")  # one migrator at a time
        config.attributes["connection"] = conn
        command.upgrade(config, "heads")  # one branch per capability, all applied


def _bump_change_token(conn: Connection) -> None:
    conn.execute(
        registry_state.update()
        .where(registry_state.c.id == 1)
        .values(counter=registry_state.c.counter + 1)
    )


class SqlRegistryStore(RegistryStore):
    def __init__(self, uri: str, *, run_migrations: bool = True) -> None:
        """``run_migrations=False`` is for server workers: the serving parent process has
        migrated already, and importing alembic would cost each worker ~0.4 s of start-up."""
        self.uri = uri
        try:
            self.engine = create_engine_for(uri)
            self.uow = UnitOfWork(self.engine, "registry")
            if run_migrations:
                migrate(self.engine)
            else:
                self._check_migrated()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the registry store: {type(exc).__name__}") from exc

    def _check_migrated(self) -> None:
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                raise StoreError("the registry store is not initialised: run `medserve init`")

    # -- transactions ---------------------------------------------------------------------
    def _read(self) -> AbstractContextManager[Connection]:
        return self.uow.read()

    def _write(self) -> AbstractContextManager[Connection]:
        """A registry change: every one affects what is served, so it bumps the reload token in
        the same transaction (servers poll ``change_token`` to follow it)."""
        return self.uow.write(_bump_change_token)

    def close(self) -> None:
        self.engine.dispose()

    # -- models ---------------------------------------------------------------------------
    def _model_row(self, conn: Connection, name: str, *, lock: bool = False) -> RowMapping:
        query = sa.select(registered_models).where(registered_models.c.name == name)
        if lock:
            # PostgreSQL: serialise writers of one model's aliases (SQLite's BEGIN IMMEDIATE
            # already serialises every writer; SQLAlchemy renders no FOR UPDATE there).
            query = query.with_for_update()
        row = conn.execute(query).mappings().first()
        if row is None:
            raise ModelNotFoundError(f"model {name!r} is not registered")
        return row

    def create_model(
        self,
        name: str,
        *,
        description: str = "",
        tags: dict[str, str] | None = None,
        created_by: str = "unknown",
    ) -> RegisteredModel:
        _check_model_name(name)
        now = _now()
        values = {
            "name": name,
            "description": description,
            "tags": dict(tags or {}),
            "created_by": created_by,
            "created_at": now,
            "updated_at": now,
            "last_version": 0,
        }
        try:
            with self._write() as conn:
                conn.execute(registered_models.insert().values(**values))
                record_change(conn, "registry.model_created", name, actor=created_by)
        except IntegrityError as exc:
            raise AlreadyExistsError(f"model {name!r} already exists") from exc
        return _model(values)  # type: ignore[arg-type]

    def get_model(self, name: str) -> RegisteredModel:
        with self._read() as conn:
            return _model(self._model_row(conn, name))

    def list_models(
        self,
        *,
        name_contains: str | None = None,
        page_size: int = 100,
        page_token: str | None = None,
    ) -> Page[RegisteredModel]:
        _check_page(page_size)
        query = sa.select(registered_models).order_by(registered_models.c.name)
        if name_contains:
            # Case-insensitive on both backends (plain LIKE is not on PostgreSQL); autoescape
            # makes '%' and '_' in the search text literal.
            query = query.where(registered_models.c.name.icontains(name_contains, autoescape=True))
        if page_token:
            (after,) = _decode_token(page_token, 1)
            if not MODEL_NAME.match(after):
                raise InvalidRequestError("invalid page_token")
            query = query.where(registered_models.c.name > after)
        with self._read() as conn:
            rows = conn.execute(query.limit(page_size + 1)).mappings().all()
        items = [_model(r) for r in rows[:page_size]]
        token = _encode_token(items[-1].name) if len(rows) > page_size else None
        return Page(items, token)

    def update_model(
        self,
        name: str,
        *,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        actor: str = "unknown",
    ) -> RegisteredModel:
        values: dict[str, Any] = {"updated_at": _now()}
        if description is not None:
            values["description"] = description
        if tags is not None:
            values["tags"] = dict(tags)
        with self._write() as conn:
            self._model_row(conn, name)
            conn.execute(
                registered_models.update().where(registered_models.c.name == name).values(**values)
            )
            record_change(
                conn, "registry.model_updated", name, actor=actor, reason=", ".join(sorted(values))
            )
            return _model(self._model_row(conn, name))

    def delete_model(self, name: str, *, actor: str = "unknown") -> None:
        with self._write() as conn:
            self._model_row(conn, name)
            conn.execute(aliases.delete().where(aliases.c.model_name == name))
            conn.execute(alias_events.delete().where(alias_events.c.model_name == name))
            conn.execute(model_versions.delete().where(model_versions.c.model_name == name))
            conn.execute(registered_models.delete().where(registered_models.c.name == name))
            record_change(conn, "registry.model_deleted", name, actor=actor)

    # -- versions -------------------------------------------------------------------------
    def create_version(
        self,
        model_name: str,
        *,
        artifact_sha256: str,
        artifact_filename: str,
        flavor: str,
        runtime: str,
        runtime_reason: str = "",
        source_flavor: str = "",
        source_artifact_sha256: str | None = None,
        library_versions: dict[str, str] | None = None,
        signature: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        serving_config: dict[str, Any] | None = None,
        description: str = "",
        created_by: str = "unknown",
    ) -> ModelVersion:
        now = _now()
        with self._write() as conn:
            updated = conn.execute(
                registered_models.update()
                .where(registered_models.c.name == model_name)
                .values(last_version=registered_models.c.last_version + 1, updated_at=now)
            )
            if updated.rowcount == 0:
                raise ModelNotFoundError(f"model {model_name!r} is not registered")
            number = conn.execute(
                sa.select(registered_models.c.last_version).where(
                    registered_models.c.name == model_name
                )
            ).scalar_one()
            values = {
                "model_name": model_name,
                "version": number,
                "artifact_sha256": artifact_sha256,
                "artifact_filename": artifact_filename,
                "flavor": flavor,
                "runtime": runtime,
                "runtime_reason": runtime_reason,
                "source_flavor": source_flavor or flavor,
                "source_artifact_sha256": source_artifact_sha256,
                "library_versions": dict(library_versions or {}),
                "signature": dict(signature or {}),
                "tags": dict(tags or {}),
                "serving_config": dict(serving_config or {}),
                "description": description,
                "created_by": created_by,
                "created_at": now,
            }
            conn.execute(model_versions.insert().values(**values))
            record_change(
                conn, "registry.version_created", model_name, version=number, actor=created_by
            )
        return _version(values)  # type: ignore[arg-type]

    def _version_row(self, conn: Connection, model_name: str, version: int) -> RowMapping:
        row = (
            conn.execute(
                sa.select(model_versions).where(
                    model_versions.c.model_name == model_name, model_versions.c.version == version
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            self._model_row(conn, model_name)
            raise VersionNotFoundError(f"model {model_name!r} has no version {version}")
        return row

    def get_version(self, model_name: str, version: int) -> ModelVersion:
        with self._read() as conn:
            return _version(self._version_row(conn, model_name, version))

    def list_versions(
        self, model_name: str, *, page_size: int = 100, page_token: str | None = None
    ) -> Page[ModelVersion]:
        _check_page(page_size)
        query = (
            sa.select(model_versions)
            .where(model_versions.c.model_name == model_name)
            .order_by(model_versions.c.version.desc())
        )
        if page_token:
            (before,) = _decode_token(page_token, 1)
            if not before.isdigit():
                raise InvalidRequestError("invalid page_token")
            query = query.where(model_versions.c.version < int(before))
        with self._read() as conn:
            self._model_row(conn, model_name)
            rows = conn.execute(query.limit(page_size + 1)).mappings().all()
        items = [_version(r) for r in rows[:page_size]]
        token = _encode_token(items[-1].version) if len(rows) > page_size else None
        return Page(items, token)

    def update_version(
        self,
        model_name: str,
        version: int,
        *,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        signature: dict[str, Any] | None = None,
        serving_config: dict[str, Any] | None = None,
        actor: str = "unknown",
    ) -> ModelVersion:
        values: dict[str, Any] = {}
        if description is not None:
            values["description"] = description
        if tags is not None:
            values["tags"] = dict(tags)
        if signature is not None:
            values["signature"] = dict(signature)
        if serving_config is not None:
            values["serving_config"] = dict(serving_config)
        with self._write() as conn:
            self._version_row(conn, model_name, version)
            if values:
                conn.execute(
                    model_versions.update()
                    .where(
                        model_versions.c.model_name == model_name,
                        model_versions.c.version == version,
                    )
                    .values(**values)
                )
                changed = ", ".join(sorted(values))
                record_change(
                    conn,
                    "registry.version_updated",
                    model_name,
                    version=version,
                    actor=actor,
                    reason=changed,
                )
            return _version(self._version_row(conn, model_name, version))

    # -- aliases --------------------------------------------------------------------------
    def _current_alias(self, conn: Connection, model_name: str, alias: str) -> int | None:
        value = conn.execute(
            sa.select(aliases.c.version).where(
                aliases.c.model_name == model_name, aliases.c.alias == alias
            )
        ).scalar_one_or_none()
        return int(value) if value is not None else None

    def _record(
        self,
        conn: Connection,
        model_name: str,
        alias: str,
        from_version: int | None,
        to_version: int | None,
        actor: str,
        reason: str,
    ) -> AliasEvent:
        values = {
            "model_name": model_name,
            "alias": alias,
            "from_version": from_version,
            "to_version": to_version,
            "actor": actor,
            "reason": reason,
            "at": _now(),
        }
        event_id = conn.execute(alias_events.insert().values(**values)).inserted_primary_key
        kind = "registry.alias_deleted" if to_version is None else "registry.alias_set"
        record_change(
            conn,
            kind,
            model_name,
            version=to_version,
            alias=alias,
            from_version=from_version,
            actor=actor,
            reason=reason,
        )
        assert event_id is not None
        return _event({**values, "id": int(event_id[0])})  # type: ignore[arg-type]

    def set_alias(
        self, model_name: str, alias: str, version: int, *, actor: str, reason: str = ""
    ) -> AliasEvent:
        _check_alias(alias)
        with self._write() as conn:
            self._model_row(conn, model_name, lock=True)
            self._version_row(conn, model_name, version)
            current = self._current_alias(conn, model_name, alias)
            if current is None:
                conn.execute(
                    aliases.insert().values(model_name=model_name, alias=alias, version=version)
                )
            else:
                conn.execute(
                    aliases.update()
                    .where(aliases.c.model_name == model_name, aliases.c.alias == alias)
                    .values(version=version)
                )
            return self._record(conn, model_name, alias, current, version, actor, reason)

    def delete_alias(
        self, model_name: str, alias: str, *, actor: str, reason: str = ""
    ) -> AliasEvent:
        with self._write() as conn:
            self._model_row(conn, model_name, lock=True)
            current = self._current_alias(conn, model_name, alias)
            if current is None:
                raise AliasNotFoundError(f"model {model_name!r} has no alias {alias!r}")
            conn.execute(
                aliases.delete().where(aliases.c.model_name == model_name, aliases.c.alias == alias)
            )
            return self._record(conn, model_name, alias, current, None, actor, reason)

    def get_alias(self, model_name: str, alias: str) -> int:
        with self._read() as conn:
            current = self._current_alias(conn, model_name, alias)
            if current is None:
                self._model_row(conn, model_name)
                raise AliasNotFoundError(f"model {model_name!r} has no alias {alias!r}")
            return current

    def list_aliases(self, model_name: str) -> dict[str, int]:
        with self._read() as conn:
            self._model_row(conn, model_name)
            rows = conn.execute(
                sa.select(aliases.c.alias, aliases.c.version)
                .where(aliases.c.model_name == model_name)
                .order_by(aliases.c.alias)
            ).all()
        return {alias: int(version) for alias, version in rows}

    def alias_history(self, model_name: str, alias: str | None = None) -> list[AliasEvent]:
        query = (
            sa.select(alias_events)
            .where(alias_events.c.model_name == model_name)
            .order_by(alias_events.c.id)
        )
        if alias is not None:
            query = query.where(alias_events.c.alias == alias)
        with self._read() as conn:
            self._model_row(conn, model_name)
            rows = conn.execute(query).mappings().all()
        return [_event(r) for r in rows]

    def all_aliases(self) -> list[tuple[str, str, int]]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(aliases.c.model_name, aliases.c.alias, aliases.c.version).order_by(
                    aliases.c.model_name, aliases.c.alias
                )
            ).all()
        return [(m, a, int(v)) for m, a, v in rows]

    def change_token(self) -> str:
        with self._read() as conn:
            counter = conn.execute(
                sa.select(registry_state.c.counter).where(registry_state.c.id == 1)
            ).scalar_one()
        return str(counter)

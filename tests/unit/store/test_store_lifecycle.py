"""Opening stores: migrations to head, idempotent reopen, schema and migrations in agreement."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from medserve.core.errors import StoreError
from medserve.core.registry.entities import ModelVersion
from medserve.core.store import open_store
from medserve.core.store.schema import metadata
from medserve.core.store.sql import SqlRegistryStore

AddVersion = Callable[..., ModelVersion]


def _heads() -> set[str]:
    """Every branch head: each capability migrates its own tables on its own alembic branch."""
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("medserve.core.store") / "migrations")
    )
    heads = set(ScriptDirectory.from_config(config).get_heads())
    assert heads
    return heads


def test_reopening_keeps_data_and_migrations_are_idempotent(
    store_uri: str, store: SqlRegistryStore, add_version: AddVersion
) -> None:
    store.create_model("m", description="kept")
    add_version("m")
    store.set_alias("m", "production", 1, actor="ana", reason="ok")
    token = store.change_token()
    store.close()

    for expected_version in (2, 3):
        reopened = SqlRegistryStore(store_uri)
        try:
            assert reopened.get_model("m").description == "kept"
            assert reopened.get_alias("m", "production") == 1
            assert [e.reason for e in reopened.alias_history("m")] == ["ok"]
            assert reopened.change_token() == token  # opening (and migrating) is not a write
            assert add_version("m", reopened).version == expected_version
            token = reopened.change_token()
        finally:
            reopened.close()


def test_database_is_at_every_newest_revision(store: SqlRegistryStore) -> None:
    with store.engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    assert sorted(versions) == sorted(_heads())


def test_migrations_match_the_table_definitions(store: SqlRegistryStore) -> None:
    """schema.py and the migration scripts describe the same tables (no forgotten migration)."""
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_open_store_picks_the_sql_store(store_uri: str) -> None:
    opened = open_store(store_uri)
    try:
        assert isinstance(opened, SqlRegistryStore)
        assert opened.list_models().items == []
    finally:
        opened.close()


def test_sqlite_file_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    opened = SqlRegistryStore(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        with opened.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        opened.close()


def test_in_memory_sqlite_store_works() -> None:
    opened = SqlRegistryStore("sqlite://")
    try:
        opened.create_model("m")
        created = opened.create_version(
            "m",
            artifact_sha256="ab" * 32,
            artifact_filename="m.onnx",
            flavor="onnx",
            runtime="onnx",
        )
        assert created.version == 1
        assert opened.get_version("m", 1).version == 1
    finally:
        opened.close()


def test_unreachable_database_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SqlRegistryStore(f"sqlite:///{tmp_path / 'missing-dir' / 'r.db'}")

"""Store fixtures: every store test runs on SQLite and on PostgreSQL.

SQLite always runs (a file in ``tmp_path``). PostgreSQL runs when ``MEDSERVE_TEST_POSTGRES_URI``
points at a database the test role owns; each test gets its own schema (via ``search_path`` in
the URI), so tests never see each other's rows and migrations run from scratch every time.
Without the URI the PostgreSQL half is skipped with a reason -- except under CI (``CI`` set),
where a missing database is a failure, so the suite can never pass on SQLite alone there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from medserve.core.registry.entities import ModelVersion
from medserve.core.store.sql import SqlRegistryStore

POSTGRES_ENV = "MEDSERVE_TEST_POSTGRES_URI"


def _with_search_path(base_uri: str, schema: str) -> str:
    url = sa.engine.make_url(base_uri)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URI for an empty registry store on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(
            f"PostgreSQL store tests need {POSTGRES_ENV}=postgresql+psycopg://USER:PASS@HOST/DB "
            "(run .ci/run, or set it to a database your role owns)"
        )
    schema = f"medserve_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        yield _with_search_path(base, schema)
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        admin.dispose()


@pytest.fixture
def store(store_uri: str) -> Iterator[SqlRegistryStore]:
    opened = SqlRegistryStore(store_uri)
    yield opened
    opened.close()


@pytest.fixture
def second_store(store_uri: str, store: SqlRegistryStore) -> Iterator[SqlRegistryStore]:
    """Another store on the same database, as a second server process would open it."""
    opened = SqlRegistryStore(store_uri)
    yield opened
    opened.close()


VersionFactory = Callable[..., ModelVersion]


@pytest.fixture
def add_version(store: SqlRegistryStore) -> VersionFactory:
    """Create a version with plausible artifact fields; keyword arguments override them."""

    def make(model_name: str, store_: SqlRegistryStore | None = None, **kw: Any) -> ModelVersion:
        fields: dict[str, Any] = {
            "artifact_sha256": "ab" * 32,
            "artifact_filename": "model.onnx",
            "flavor": "onnx",
            "runtime": "onnx",
        }
        fields.update(kw)
        return (store_ or store).create_version(model_name, **fields)

    return make

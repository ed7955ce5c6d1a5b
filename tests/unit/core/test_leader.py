"""One leader for the monitoring schedule: a PostgreSQL advisory lock across processes and nodes
(freed when the leader's session ends), a file lock on SQLite."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from medserve.core.leader import LeaderLock


def test_sqlite_homes_elect_by_file_lock(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    first = LeaderLock(engine, 1, tmp_path / "schedule.lock")
    second = LeaderLock(engine, 1, tmp_path / "schedule.lock")
    assert first.kind == "file lock"
    assert first.try_acquire()
    assert first.try_acquire()  # the leader stays the leader
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()


@pytest.fixture
def postgres() -> Iterator[sa.Engine]:
    uri = os.environ.get("MEDSERVE_TEST_POSTGRES_URI")
    if not uri:
        pytest.skip("needs PostgreSQL: MEDSERVE_TEST_POSTGRES_URI (see .ci/run)")
    engine = sa.create_engine(uri)
    yield engine
    engine.dispose()


@pytest.mark.postgres
def test_postgresql_elects_one_leader_across_connections(
    postgres: sa.Engine, tmp_path: Path
) -> None:
    lock_id = 700_000 + uuid.uuid4().int % 10_000  # no clash with another run's lock
    first = LeaderLock(postgres, lock_id, tmp_path / "unused.lock")
    other_engine = sa.create_engine(postgres.url)  # another process's pool
    second = LeaderLock(other_engine, lock_id, tmp_path / "unused.lock")
    try:
        assert first.kind == "postgresql advisory lock"
        assert first.try_acquire()
        assert not second.try_acquire()
        assert not (tmp_path / "unused.lock").exists()  # no file lock on PostgreSQL
        first._connection.invalidate()  # the leader's session dies: PostgreSQL frees its lock
        first._connection = None
        assert second.try_acquire()
    finally:
        second.release()
        first.release()
        other_engine.dispose()

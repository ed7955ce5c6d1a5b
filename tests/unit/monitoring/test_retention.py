"""Retention of the prediction log (issue 16): ``retention_days`` per model purges log rows, their
by-id index rows and outcomes older than the period, on every monitoring run (the schedule's call)
and with ``medserve monitor purge``; each purge is audited; unset means nothing is purged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from medserve.core.audit import AuditLog
from medserve.core.monitoring_config import ModelMonitoringConfig
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.monitoring import RETENTION_PURGE, MonitoringStore, inserted_id
from medserve.core.store.schema import registry_outbox
from medserve.core.store.tables_monitoring import (
    mon_outcomes,
    mon_prediction_batches,
    mon_prediction_ids,
)
from medserve.faces.cli import app
from medserve.features.monitoring.retention import purge_expired
from medserve.features.monitoring.runner import run_model

MODEL = "breast-cancer"
OTHER = "breast-cancer-rf"
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _batch(store: MonitoringStore, model: str, last_at: datetime, n: int = 3) -> int:
    """One packed log row of ``n`` predictions ending at ``last_at``, with a caller's request
    id indexed for it and an outcome on each prediction."""
    first_at = last_at - timedelta(seconds=30)
    times = [int(first_at.timestamp() * 1e6) + i for i in range(n)]
    with store.transaction() as conn:
        seq = inserted_id(
            conn.execute(
                mon_prediction_batches.insert().values(
                    model_name=model,
                    version=1,
                    first_at=first_at,
                    last_at=last_at,
                    n=n,
                    ids=orjson.dumps([f"caller-{last_at:%j%H}-{i}" for i in range(n)]).decode(),
                    times=orjson.dumps(times).decode(),
                    inputs=orjson.dumps([[1.0] for _ in range(n)]).decode(),
                    outputs=orjson.dumps({"label": ["benign"] * n}).decode(),
                    latency_ms=orjson.dumps([1.0] * n).decode(),
                )
            )
        )
        conn.execute(mon_prediction_ids.insert().values(request_id=f"k{seq}", batch_seq=seq))
        conn.execute(
            mon_outcomes.insert(),
            [
                {"batch_seq": seq, "idx": i, "outcome": '"benign"', "outcome_at": last_at}
                for i in range(n)
            ],
        )
    return seq


def _seqs(store: MonitoringStore) -> dict[str, set[int]]:
    with store.engine.connect() as conn:
        return {
            "batches": set(conn.execute(sa.select(mon_prediction_batches.c.seq)).scalars()),
            "ids": set(conn.execute(sa.select(mon_prediction_ids.c.batch_seq)).scalars()),
            "outcomes": set(conn.execute(sa.select(mon_outcomes.c.batch_seq)).scalars()),
        }


def _outbox(store: MonitoringStore) -> list[dict[str, object]]:
    t = registry_outbox
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.kind == RETENTION_PURGE)).mappings().all()
    return [dict(r) for r in rows]


def _seed(store: MonitoringStore) -> dict[str, int]:
    return {
        "old": _batch(store, MODEL, NOW - timedelta(days=40)),
        "just_old": _batch(store, MODEL, NOW - timedelta(days=30, seconds=1)),
        # first prediction before the cutoff, last after: the row stays (by its last_at)
        "straddling": _batch(store, MODEL, NOW - timedelta(days=30) + timedelta(seconds=10)),
        "new": _batch(store, MODEL, NOW - timedelta(days=29, hours=23)),
        "other_old": _batch(store, OTHER, NOW - timedelta(days=40)),  # no retention set
    }


def test_purge_removes_old_rows_from_all_three_tables_and_is_audited(
    bc_registry: Registry,
) -> None:
    store = MonitoringStore(bc_registry.store)
    store.set_config(MODEL, ModelMonitoringConfig(retention_days=30), "test")
    seq = _seed(store)

    purged = purge_expired(store, MODEL, actor="cli:owner", now=NOW)

    assert purged is not None
    assert (purged.rows, purged.predictions, purged.outcomes) == (2, 6, 6)
    kept = {seq["straddling"], seq["new"], seq["other_old"]}
    assert _seqs(store) == {"batches": kept, "ids": kept, "outcomes": kept}
    assert store.count_predictions(MODEL) == 6
    (entry,) = _outbox(store)
    assert entry["model_name"] == MODEL
    assert entry["actor"] == "cli:owner"
    assert str(entry["reason"]).startswith("2 rows older than 2026-11-06T12:00:00Z")
    assert "retention 30 days" in str(entry["reason"])
    audit = AuditLog(store.engine)
    audit.drain_outbox()
    chained = [e for e in audit.entries() if e["action"] == RETENTION_PURGE]
    assert len(chained) == 1
    assert chained[0]["model"] == MODEL
    assert audit.verify().ok

    again = purge_expired(store, MODEL, actor="cli:owner", now=NOW)
    assert again is not None
    assert again.rows == 0
    assert _outbox(store) == []  # nothing purged: no audit entry per idle run


def test_without_retention_days_nothing_is_purged(bc_registry: Registry) -> None:
    store = MonitoringStore(bc_registry.store)
    seq = _seed(store)
    assert purge_expired(store, MODEL, now=NOW) is None
    assert _seqs(store)["batches"] == set(seq.values())
    assert _outbox(store) == []


def test_the_monitoring_run_the_schedule_calls_purges(bc_registry: Registry) -> None:
    store = MonitoringStore(bc_registry.store)
    store.set_config(MODEL, ModelMonitoringConfig(retention_days=30), "test")
    seq = _seed(store)

    result = run_model(store, bc_registry.store, MODEL, window_s=3600, now=NOW)

    assert result["purged"] == 6
    assert _seqs(store)["batches"] == {seq["straddling"], seq["new"], seq["other_old"]}
    assert [e["actor"] for e in _outbox(store)] == ["medserve"]


runner = CliRunner()


@pytest.fixture
def cli_home(bc_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDSERVE_HOME", str(bc_home))
    monkeypatch.delenv("MEDSERVE_STORE_URI", raising=False)
    return bc_home


def test_cli_sets_retention_and_purges_on_demand(cli_home: Path) -> None:
    registry = Registry.open(Settings(home=cli_home))
    try:
        store = MonitoringStore(registry.store)
        now = datetime.now(UTC)
        old = _batch(store, MODEL, now - timedelta(days=10))
        new = _batch(store, MODEL, now - timedelta(days=1))
        other = _batch(store, OTHER, now - timedelta(days=10))

        result = runner.invoke(app, ["monitor", "config", MODEL, "--set", "retention_days=7"])
        assert result.exit_code == 0, result.output
        assert "retention_days = 7" in result.output
        result = runner.invoke(app, ["monitor", "purge"])
        assert result.exit_code == 0, result.output
        assert f"{MODEL}: purged 1 rows older than" in result.output
        assert f"{OTHER}: no retention_days set" in result.output
        assert _seqs(store)["batches"] == {new, other}
        assert old not in _seqs(store)["outcomes"]
        assert len(_outbox(store)) == 1
    finally:
        registry.close()


@pytest.mark.parametrize("value", ["0", "-3", "1.5", "seven", "2.0"])
def test_cli_refuses_retention_that_is_not_a_whole_positive_number(
    cli_home: Path, value: str
) -> None:
    result = runner.invoke(app, ["monitor", "config", MODEL, "--set", f"retention_days={value}"])
    assert result.exit_code != 0
    assert "retention_days: retention_days must be a whole number of days from 1" in " ".join(
        result.output.split()
    )
    registry = Registry.open(Settings(home=cli_home))
    try:
        assert MonitoringStore(registry.store).config(MODEL).retention_days is None
    finally:
        registry.close()


def test_config_model_refuses_bad_retention() -> None:
    assert ModelMonitoringConfig(retention_days="14").retention_days == 14
    for bad in (0, -1, 1.5, True, "x", 40_000):
        with pytest.raises(ValueError, match="whole number of days"):
            ModelMonitoringConfig(retention_days=bad)

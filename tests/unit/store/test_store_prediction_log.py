"""The packed prediction log on SQLite and PostgreSQL: what goes in comes out row by row,
outcomes find their rows by medserve's ids, by a caller's ids and by patient window, and rows
logged before the log was packed survive the migration."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from importlib import resources

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from orjson import loads as orjson_loads

from medserve.core.context import (
    RequestContext,
    local_context,
    new_request_id,
    now_us,
    request_id_time_us,
    stored_request_id,
)
from medserve.core.events import PredictionEvent
from medserve.core.monitoring_config import MonitoringSettings
from medserve.core.phi import pseudonymize
from medserve.core.prediction_log import PredictionLog
from medserve.core.registry.signature import FeatureSpec, Signature
from medserve.core.store.monitoring import MonitoringStore
from medserve.core.store.sql import SqlRegistryStore, create_engine_for
from medserve.core.store.tables_monitoring import PACKED_SPAN_S, mon_prediction_batches

SALT = b"t" * 32
NAMES = ["age", "creatinine", "mrn"]
SIGNATURE = Signature(
    inputs=[
        FeatureSpec(name="age", type="float"),
        FeatureSpec(name="creatinine", type="float"),
        FeatureSpec(name="mrn", type="string", identifier=True),
    ]
)


def _log(store: SqlRegistryStore) -> PredictionLog:
    return PredictionLog(
        store.engine,
        MonitoringSettings(flush_interval_s=60, sites=["north"]),
        salt=SALT,
        signature_of=lambda m, v: SIGNATURE,
    )


def _event(
    request_id: str,
    rows: list[list[object]],
    *,
    model: str = "risk",
    patient: str | None = None,
    site: str | None = None,
) -> PredictionEvent:
    X = np.array(rows, dtype=object)
    scores = np.array([[1 - float(r[1]) / 10, float(r[1]) / 10] for r in rows])
    outputs = {"label": (scores[:, 1] > 0.5).astype(np.int64), "probabilities": scores}
    context = RequestContext(
        request_id=request_id,
        patient_id=patient,
        site=site,
        id_time_us=request_id_time_us(request_id),  # set where medserve made the id
    )
    return PredictionEvent(context, model, 1, NAMES, X, outputs, 0.002)


def keyed(request_id: str) -> str:
    """A caller's own request id as the log keeps it: a keyed hash, never as sent."""
    return stored_request_id(request_id, None, SALT)


def _all(monitoring: MonitoringStore, model: str = "risk") -> dict[str, object]:
    found = monitoring.predictions(
        model, datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(minutes=20)
    )
    return {p.id: p for p in found}


def test_rows_round_trip_de_identified(store: SqlRegistryStore) -> None:
    log = _log(store)
    own = new_request_id()
    log.on_prediction(_event(own, [[61, 1.2, "MRN-0042"]], patient="PAT-1", site="north"))
    log.on_prediction(_event("caller-7", [[70, 2.5, "MRN-0043"], [45, 0.9, "MRN-0044"]]))
    street = "12 Quaxley Lane, 90210"  # a caller may put anything in X-Site
    log.on_prediction(_event(new_request_id(), [[50, 6.0, None]], model="other", site=street))
    log.close()
    monitoring = MonitoringStore(store.engine)
    assert monitoring.count_predictions() == 4
    assert monitoring.count_predictions("risk") == 3
    assert monitoring.prediction_ids("risk") == [
        f"{own}-0",
        f"{keyed('caller-7')}-0",
        f"{keyed('caller-7')}-1",
    ]
    rows = _all(monitoring)
    first = rows[f"{own}-0"]
    assert first.inputs == [61.0, 1.2, pseudonymize("MRN-0042", salt=SALT)]
    assert first.outputs == {"label": 0, "probabilities": [pytest.approx(0.88), 0.12]}
    assert first.patient == pseudonymize("PAT-1", salt=SALT)
    assert first.site == "north"
    assert first.latency_ms == pytest.approx(2.0)
    assert abs((datetime.now(UTC) - first.at).total_seconds()) < 60
    second = rows[f"{keyed('caller-7')}-1"]
    assert second.inputs[:2] == [45.0, 0.9]
    assert second.patient is None
    assert second.site is None
    assert rows[f"{keyed('caller-7')}-0"].outputs["label"] == 0
    [other] = _all(monitoring, "other").values()
    assert other.site == pseudonymize(street, salt=SALT).replace("pid_", "site_")  # unregistered
    with store.engine.connect() as conn:
        text = " ".join(
            str(v) for row in conn.execute(sa.select(mon_prediction_batches)) for v in row
        )
    assert "MRN-004" not in text
    assert "PAT-1" not in text


def test_outcomes_by_own_id_caller_id_and_patient_window(store: SqlRegistryStore) -> None:
    log = _log(store)
    own = new_request_id()
    log.on_prediction(_event(own, [[61, 1.2, "a"], [62, 1.3, "b"]], patient="PAT-9"))
    log.on_prediction(_event("caller-1", [[70, 2.5, "c"]], patient="PAT-9"))
    log.on_prediction(_event("caller-1", [[71, 2.6, "d"]], model="other"))
    log.close()
    monitoring = MonitoringStore(store.engine)
    counts = monitoring.attach_outcomes(
        "risk",
        [
            {"prediction_id": f"{own}-1", "outcome": 1},
            {"prediction_id": "caller-1-0", "outcome": 0},  # as the caller knows it
            {"prediction_id": f"{own}-7", "outcome": 1},  # no such row
            {"prediction_id": "not-logged-0", "outcome": 1},
        ],
        keyed=keyed,
    )
    assert counts == [1, 1, 0, 0]
    rows = _all(monitoring)
    assert rows[f"{own}-1"].outcome == 1
    assert rows[f"{own}-1"].outcome_at is not None
    assert rows[f"{own}-0"].outcome is None
    assert rows[f"{keyed('caller-1')}-0"].outcome == 0
    assert (
        _all(monitoring, "other")[f"{keyed('caller-1')}-0"].outcome is None
    )  # the model narrows the id
    # by patient window: every row of that pseudonym, model and window; again replaces
    now = datetime.now(UTC)
    item = {
        "patient": pseudonymize("PAT-9", salt=SALT),
        "model": "risk",
        "start": now - timedelta(minutes=5),
        "end": now + timedelta(minutes=5),
        "outcome": {"event": True, "time_days": 12},
    }
    assert monitoring.attach_outcomes(None, [item]) == [3]
    assert all(p.outcome == {"event": True, "time_days": 12} for p in _all(monitoring).values())
    late = {**item, "start": now + timedelta(minutes=1)}
    assert monitoring.attach_outcomes(None, [late]) == [0]


def test_batches_span_at_most_the_bound_and_windows_cut_inside_them(
    store: SqlRegistryStore,
) -> None:
    log = _log(store)
    base = int(time.time()) - 3600  # whole seconds: the window edges are exact
    step_us = PACKED_SPAN_S * 1_000_000 // 3  # queued events carry their log time in µs
    items = [
        log.record(_event(f"r{i}", [[60 + i, 1.0, "x"]]), base * 1_000_000 + i * step_us)
        for i in range(9)
    ]
    packs = log.packs(items)
    assert len(packs) >= 3
    log.write_packs(packs)
    log.close()
    with store.engine.connect() as conn:
        spans = conn.execute(
            sa.select(mon_prediction_batches.c.first_at, mon_prediction_batches.c.last_at)
        ).all()
    assert all((last - first).total_seconds() <= PACKED_SPAN_S for first, last in spans)
    monitoring = MonitoringStore(store.engine)
    start = datetime.fromtimestamp(base + 2 * PACKED_SPAN_S / 3, UTC)
    end = datetime.fromtimestamp(base + 6 * PACKED_SPAN_S / 3, UTC)
    got = monitoring.predictions("risk", start, end)
    assert [p.id for p in got] == [f"{keyed(f'r{i}')}-0" for i in (2, 3, 4, 5)]  # [start, end)


def test_migration_moves_rows_logged_before_packing(store_uri: str) -> None:
    engine = create_engine_for(store_uri)
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("medserve.core.store") / "migrations")
    )
    with engine.connect().execution_options(medserve_write=True) as conn, conn.begin():
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")  # the monitoring branch before packing
    at = datetime(2026, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
    stamp = sa.DateTime(timezone=True)
    old = sa.table(
        "mon_predictions",
        *(sa.column(c) for c in ("id", "model_name", "version", "patient", "site")),
        *(sa.column(c) for c in ("inputs", "outputs", "latency_ms", "outcome")),
        sa.column("at", stamp),
        sa.column("outcome_at", stamp),
    )
    with engine.begin() as conn:
        conn.execute(
            old.insert(),
            [
                {
                    "id": "legacy-0",
                    "model_name": "risk",
                    "version": 1,
                    "at": at,
                    "patient": "p" * 64,
                    "site": "west",
                    "inputs": "[61.0, 1.2, null]",
                    "outputs": '{"label": 1}',
                    "latency_ms": 3.5,
                    "outcome": "1",
                    "outcome_at": at,
                },
                {
                    "id": "legacy-1",
                    "model_name": "risk",
                    "version": 1,
                    "at": at + timedelta(seconds=1),
                    "patient": None,
                    "site": None,
                    "inputs": "[40.0, 0.7, null]",
                    "outputs": '{"label": 0}',
                    "latency_ms": 1.0,
                    "outcome": None,
                    "outcome_at": None,
                },
            ],
        )
    engine.dispose()
    store = SqlRegistryStore(store_uri)  # migrates to every head
    try:
        monitoring = MonitoringStore(store.engine)
        rows = {p.id: p for p in monitoring.predictions("risk", at, at + timedelta(seconds=2))}
        assert set(rows) == {"legacy-0", "legacy-1"}
        assert rows["legacy-0"].at == at
        assert rows["legacy-0"].outcome == 1
        assert rows["legacy-0"].inputs == [61.0, 1.2, None]
        assert rows["legacy-0"].site == "west"
        assert rows["legacy-1"].outcome is None
        assert rows["legacy-1"].outputs == {"label": 0}
        assert monitoring.attach_outcomes(
            "risk", [{"prediction_id": "legacy-1", "outcome": 0}]
        ) == [1]
        with store.engine.connect() as conn:
            assert "mon_predictions" not in sa.inspect(conn).get_table_names()
    finally:
        store.close()


NUMERIC = Signature(
    inputs=[FeatureSpec(name="age", type="float"), FeatureSpec(name="creatinine", type="float")]
)


def test_numeric_inputs_are_stored_as_npy_and_read_back_as_json_gave_them(
    store_uri: str,
) -> None:
    store = SqlRegistryStore(store_uri)
    log = PredictionLog(
        store.engine,
        MonitoringSettings(flush_interval_s=60),
        salt=SALT,
        signature_of=lambda m, v: NUMERIC,
    )
    rows = [[[61.0, 0.1]], [[40.5, 1.3], [72.0, 2.7]]]
    for i, matrix in enumerate(rows):
        X = np.array(matrix, dtype=np.float32)
        outputs = {"label": np.arange(len(matrix), dtype=np.int64), "score": X[:, 1] / 10}
        context = RequestContext(request_id=f"caller-{i}")
        log.on_prediction(
            PredictionEvent(context, "risk", 1, ["age", "creatinine"], X, outputs, 0.001)
        )
    log.close()
    try:
        with store.engine.connect() as conn:
            stored = conn.execute(
                sa.select(mon_prediction_batches.c.inputs, mon_prediction_batches.c.inputs_npy)
            ).one()
        assert stored.inputs is None
        assert bytes(stored.inputs_npy).startswith(b"\x93NUMPY")
        got = _all(MonitoringStore(store.engine))
        # float32 values come back by their shortest text, as when inputs were JSON
        assert {k: p.inputs for k, p in got.items()} == {
            f"{keyed('caller-0')}-0": [61.0, 0.1],
            f"{keyed('caller-1')}-0": [40.5, 1.3],
            f"{keyed('caller-1')}-1": [72.0, 2.7],
        }
        assert got[f"{keyed('caller-1')}-1"].outputs["label"] == 1

        config = Config()
        config.set_main_option(
            "script_location", str(resources.files("medserve.core.store") / "migrations")
        )
        with store.engine.connect().execution_options(medserve_write=True) as conn, conn.begin():
            config.attributes["connection"] = conn
            command.downgrade(config, "0006")  # the matrix goes back into the JSON column
            text = conn.execute(sa.select(mon_prediction_batches.c.inputs)).scalar_one()
        assert text is not None
        assert np.allclose(np.array(orjson_loads(text)), [[61.0, 0.1], [40.5, 1.3], [72.0, 2.7]])
    finally:
        store.close()


def test_only_ids_that_do_not_carry_their_log_time_are_indexed(store: SqlRegistryStore) -> None:
    log = _log(store)
    now = now_us()
    own = local_context("v2")  # made by medserve: its time is in the context
    caller = RequestContext(request_id="order-77")
    stale = RequestContext(
        request_id=new_request_id(now - 3_600_000_000), id_time_us=now - 3_600_000_000
    )
    items = [log.record(_event_for(c), now) for c in (own, caller, stale)]
    _, by_id = log.pack("risk", 1, items)
    log.close()
    assert by_id == {keyed("order-77"), stale.request_id}  # an hour before its log time: by id


def _event_for(context: RequestContext) -> PredictionEvent:
    X = np.array([[50.0, 1.0, "x"]], dtype=object)
    outputs = {"label": np.array([0], dtype=np.int64)}
    return PredictionEvent(context, "risk", 1, NAMES, X, outputs, 0.001)

"""Reading a window page by page: the rows in ``[start, end)`` exactly, float32 inputs as the
model got them (no decimal text in between), what arrived missing, outcomes, labelled only."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from medserve.core.context import RequestContext, new_request_id
from medserve.core.events import PredictionEvent
from medserve.core.monitoring_config import MonitoringSettings
from medserve.core.prediction_log import PredictionLog, from_us
from medserve.core.registry.signature import FeatureSpec, Signature
from medserve.core.store.monitoring import MonitoringStore
from medserve.core.store.sql import SqlRegistryStore

SALT = b"s" * 32
SIGNATURE = Signature(
    inputs=[
        FeatureSpec(name="age", type="float"),
        FeatureSpec(name="lactate", type="float", missing="impute", impute_value=1.1),
    ]
)
T0 = 1_900_000_000_000_000  # µs since the epoch


def test_window_pages_hold_exactly_the_window(store: SqlRegistryStore) -> None:
    log = PredictionLog(
        store.engine, MonitoringSettings(), salt=SALT, signature_of=lambda m, v: SIGNATURE
    )
    validator = SIGNATURE.validator()
    sent = []
    try:
        for batch in range(4):  # four stored batches, 10 s apart, 3 requests of 2 rows each
            records = []
            for request in range(3):
                lactate = None if request == 1 else 1.3 + batch
                rows = [{"age": 40.1 + batch, "lactate": lactate}, {"age": 50.7, "lactate": 2.2}]
                X = validator.records_to_matrix(rows)
                sent.append(X)
                event = PredictionEvent(
                    RequestContext(request_id=new_request_id()),
                    "risk",
                    1,
                    SIGNATURE.feature_names,
                    X,
                    {"value": np.ones(2, dtype=np.float32)},
                    0.001,
                )
                records.append(log.record(event, T0 + batch * 10_000_000 + request * 1_000_000))
            log.write_packs(log.packs(records))
    finally:
        log.close()
    monitoring = MonitoringStore(store.engine)
    ids = monitoring.prediction_ids("risk")
    labelled = monitoring.attach_outcomes("risk", [{"prediction_id": ids[7], "outcome": 1}])
    assert labelled == [1]
    # From the middle request of batch 0 to before the last request of batch 3.
    start, end = from_us(T0 + 1_000_000), from_us(T0 + 32_000_000)
    pages = list(monitoring.window_batches("risk", start, end, page_rows=1))
    assert [b.kept for b in pages] == [4, 6, 6, 4]
    assert sum(b.kept for b in pages) == monitoring.count_window("risk", start, end)
    assert len(monitoring.predictions("risk", start, end)) == 20
    first = pages[0]
    assert first.keep is not None
    assert first.keep.tolist() == [False, False] + [True] * 4
    assert pages[1].keep is None  # wholly inside: its times are not even read
    assert isinstance(first.inputs, np.ndarray)
    assert first.inputs.dtype == np.float32
    assert np.array_equal(first.inputs, np.concatenate(sent[:3]))  # bit for bit
    # The null lactate of each batch's middle request arrived missing (then imputed).
    assert all(b.missing == [[2, 1, 1]] for b in pages)
    assert pages[1].outcomes == {1: 1}
    assert [b.seq for b in monitoring.window_batches("risk", start, end, labelled_only=True)] == [
        pages[1].seq
    ]
    assert next(iter(monitoring.window_batches("risk", end, end + timedelta(hours=1)))).kept == 2

"""A trajectory model trained from a spec, registered, and served through records, OIP v2 and
FHIR in process: the series features each protocol computes equal each other and training's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient
from tests.unit.serving.inprocess_app import registry_at, serve

from medserve.core.events import PredictionEvent, RefusalEvent
from medserve.core.store.governance import GovernanceStore
from medserve.faces.demo.trajectory import (
    MODEL,
    demo_spec,
    fhir_bundle,
    records_instance,
    register_trajectory_model,
    v2_body,
)
from medserve.features.training.trajectories import Samples, TrajectorySpec

FHIR = "application/fhir+json"


class Capture:
    """An observer keeping the model matrix of every answered prediction."""

    def __init__(self) -> None:
        self.inputs: list[np.ndarray] = []
        self.names: list[str] = []

    def on_prediction(self, event: PredictionEvent) -> None:
        self.inputs.append(np.array(event.inputs, dtype=np.float64))
        self.names = list(event.feature_names)

    def on_refusal(self, event: RefusalEvent) -> None:
        pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrajectorySpec, Samples]:
    home = tmp_path_factory.mktemp("trajectories") / "home"
    spec = demo_spec(stays=120, bootstrap=0)
    with registry_at(home) as registry:
        _, samples = register_trajectory_model(registry, spec)
    return home, spec, samples


@pytest.fixture(scope="module")
def app(
    trained: tuple[Path, TrajectorySpec, Samples],
) -> Iterator[tuple[TestClient, Any, Capture]]:
    capture = Capture()
    with serve(trained[0], security=False) as (client, resources):
        resources.plane.observers.append(capture)
        yield client, resources, capture


def _rows(samples: Samples) -> list[int]:
    """Test rows with every series non-empty, with some empty window, and one of each label."""
    frame = samples.frame
    label = next(c for c in frame.columns if c.endswith("_within_12h"))
    positive = np.flatnonzero(frame[label].to_numpy() == 1)
    negative = np.flatnonzero(frame[label].to_numpy() == 0)
    return [int(positive[0]), int(negative[0]), int(negative[-1])]


def test_series_features_agree_across_protocols_and_with_training(
    app: tuple[TestClient, Any, Capture], trained: tuple[Path, TrajectorySpec, Samples]
) -> None:
    client, _, capture = app
    _, spec, samples = trained
    rows = _rows(samples)
    columns = [f.column for f in spec.features]
    expected = samples.frame.loc[rows, columns].to_numpy(dtype=np.float64)

    capture.inputs.clear()
    body = {"instances": [records_instance(samples, r, spec.static) for r in rows]}
    records = client.post(f"/v1/models/{MODEL}/predict", json=body)
    assert records.status_code == 200, records.text
    v2 = client.post(f"/v2/models/{MODEL}/infer", json=v2_body(samples, rows, spec.static))
    assert v2.status_code == 200, v2.text
    fhir = [
        client.post(
            f"/v1/models/{MODEL}/predict",
            json=fhir_bundle(samples, r),
            headers={"Content-Type": FHIR, "Accept": FHIR},
        )
        for r in rows
    ]
    for answer in fhir:
        assert answer.status_code == 200, answer.text
    assert len(capture.inputs) == 2 + len(rows)
    at = [capture.names.index(c) for c in columns]
    by_records = capture.inputs[0][:, at]
    by_v2 = capture.inputs[1][:, at]
    by_fhir = np.vstack([m[:, at] for m in capture.inputs[2:]])
    # the model matrix is float32: compare what each protocol computed, rounded alike
    reference = expected.astype(np.float32).astype(np.float64)
    for served in (by_records, by_v2, by_fhir):
        np.testing.assert_allclose(served, reference, rtol=0, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(by_records, by_v2, rtol=0, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(by_records, by_fhir, rtol=0, atol=1e-6, equal_nan=True)
    # the same matrix gives the same risk through records and v2
    p_records = [p["probabilities"]["1"] for p in records.json()["predictions"]]
    p_v2 = next(o for o in v2.json()["outputs"] if o["name"] == "probabilities")["data"][1::2]
    np.testing.assert_allclose(p_records, p_v2, atol=1e-6)


def test_logged_inputs_hold_no_absolute_dates(
    app: tuple[TestClient, Any, Capture], trained: tuple[Path, TrajectorySpec, Samples]
) -> None:
    """What observers (the prediction log) get is the static inputs and derived features:
    numbers, none of them a date or a calendar time."""
    client, _, capture = app
    _, spec, samples = trained
    capture.inputs.clear()
    row = _rows(samples)[0]
    body = {"instances": [records_instance(samples, row, spec.static)]}
    assert client.post(f"/v1/models/{MODEL}/predict", json=body).status_code == 200
    names = capture.names
    assert names == [*spec.static, *(f.column for f in spec.features)]
    matrix = capture.inputs[0]
    assert np.nanmax(np.abs(matrix)) < 1e6  # an epoch timestamp would be ~1.7e9


def test_metadata_declares_series_tensors(app: tuple[TestClient, Any, Capture]) -> None:
    client, _, _ = app
    meta = client.get(f"/v2/models/{MODEL}").json()
    by_name = {i["name"]: i for i in meta["inputs"]}
    assert by_name["lactate.values"]["shape"] == [-1, -1]
    assert by_name["lactate.values"]["datatype"] == "FP32"
    assert by_name["lactate.times"]["shape"] == [-1, -1]
    assert by_name["lactate.lengths"] == {
        "name": "lactate.lengths",
        "datatype": "INT32",
        "shape": [-1],
        "parameters": by_name["lactate.lengths"]["parameters"],
    }
    assert "lactate_last" not in by_name  # derived, never sent
    assert "age" in by_name
    assert meta["parameters"]["series_features"]


def test_card_states_the_split_and_labels(trained: tuple[Path, TrajectorySpec, Samples]) -> None:
    home, spec, _ = trained
    with registry_at(home) as registry:
        gov = GovernanceStore(registry.store)
        record = gov.training_run(MODEL, 1)
        card = gov.card(MODEL, 1)
    assert record is not None
    split = record["split"]
    assert split["patient_overlap"] == 0
    assert "by patient and by time" in split["method"]
    assert split["horizon_label"]["horizon"] == spec.horizon
    assert "by patient and by time" in card["training_method"]


# -- bad series: one test per rule, each a 422 naming the series, the point and the rule ---------
def _instance(points: dict[str, list[list[Any]]], as_of: str = "2026-03-01T14:00:00+01:00") -> Any:
    return {"instances": [{"age": 70.0, "as_of": as_of, "series": points}]}


def _refused(client: TestClient, body: Any) -> dict[str, Any]:
    answer = client.post(f"/v1/models/{MODEL}/predict", json=body)
    assert answer.status_code == 422, answer.text
    payload = answer.json()
    assert payload["code"] == "validation_failed"
    return payload


def _only(payload: dict[str, Any], rule: str) -> dict[str, Any]:
    found = [d for d in payload["details"] if d["rule"] == rule]
    assert len(found) == 1, payload
    return found[0]


def _hr(*pairs: tuple[str, Any]) -> list[list[Any]]:
    return [[f"2026-03-01T{t}+01:00", v] for t, v in pairs]


def test_unsorted_series_is_refused(app: tuple[TestClient, Any, Capture]) -> None:
    payload = _refused(
        app[0], _instance({"heart_rate": _hr(("10:00:00", 80), ("09:00:00", 82), ("11:00:00", 85))})
    )
    problem = _only(payload, "unsorted")
    assert (problem["field"], problem["index"], problem["row"]) == ("series.heart_rate", 1, 0)
    assert "series.heart_rate" in payload["error"]
    assert "point 1" in payload["error"]


def test_duplicate_time_is_refused(app: tuple[TestClient, Any, Capture]) -> None:
    payload = _refused(
        app[0], _instance({"heart_rate": _hr(("09:00:00", 80), ("10:00:00", 82), ("10:00:00", 84))})
    )
    problem = _only(payload, "duplicate_time")
    assert (problem["field"], problem["index"]) == ("series.heart_rate", 2)


def test_time_later_than_as_of_is_refused(app: tuple[TestClient, Any, Capture]) -> None:
    # 13:30Z is 14:30 at +01:00: after as_of, though its clock time reads earlier
    points = [["2026-03-01T12:00:00+01:00", 2.0], ["2026-03-01T13:30:00Z", 2.4]]
    payload = _refused(app[0], _instance({"lactate": points}))
    problem = _only(payload, "after_as_of")
    assert (problem["field"], problem["index"]) == ("series.lactate", 1)


def test_series_over_max_length_is_refused(
    app: tuple[TestClient, Any, Capture], trained: tuple[Path, TrajectorySpec, Samples]
) -> None:
    limit = next(s.max_length for s in trained[1].series if s.name == "lactate")
    points = [[f"2026-03-01T{h:02d}:{m:02d}:00+01:00", 2.0] for h in range(14) for m in (0, 30)]
    assert len(points) > limit
    problem = _only(_refused(app[0], _instance({"lactate": points})), "max_length")
    assert (problem["field"], problem["index"]) == ("series.lactate", limit)


def test_gap_over_max_gap_is_refused(app: tuple[TestClient, Any, Capture]) -> None:
    points = [["2026-02-28T18:00:00+01:00", 80], ["2026-03-01T08:00:00+01:00", 84]]  # 14 h
    problem = _only(_refused(app[0], _instance({"heart_rate": points})), "max_gap")
    assert (problem["field"], problem["index"]) == ("series.heart_rate", 1)


def test_unconvertible_unit_is_refused(app: tuple[TestClient, Any, Capture]) -> None:
    points = [
        ["2026-03-01T10:00:00+01:00", 2.0, "mmol/L"],
        ["2026-03-01T12:00:00+01:00", 3.0, "kg"],
    ]
    problem = _only(_refused(app[0], _instance({"lactate": points})), "unit")
    assert (problem["field"], problem["index"]) == ("series.lactate", 1)


def test_convertible_unit_is_converted(app: tuple[TestClient, Any, Capture]) -> None:
    client, _, capture = app
    capture.inputs.clear()
    points = [
        ["2026-03-01T10:00:00+01:00", 29.0, "mm[Hg]"],
        ["2026-03-01T12:00:00+01:00", 4.0, "kPa"],
    ]
    answer = client.post(f"/v1/models/{MODEL}/predict", json=_instance({"sbp": points}))
    assert answer.status_code == 200, answer.text
    last = capture.inputs[0][0, capture.names.index("sbp_last_6h")]
    assert last == pytest.approx(4.0 * 7.50062, rel=1e-4)


def test_non_numeric_value_is_refused(app: tuple[TestClient, Any, Capture]) -> None:
    points = _hr(("09:00:00", 80), ("10:00:00", "82"), ("11:00:00", True))
    payload = _refused(app[0], _instance({"heart_rate": points}))
    found = [d for d in payload["details"] if d["rule"] == "non_numeric"]
    assert [(d["field"], d["index"]) for d in found] == [
        ("series.heart_rate", 1),
        ("series.heart_rate", 2),
    ]


def test_errors_never_quote_times_or_values(app: tuple[TestClient, Any, Capture]) -> None:
    points = _hr(("10:00:00", 81.25), ("09:00:00", 82.5))
    payload = _refused(app[0], _instance({"heart_rate": points}))
    text = str(payload)
    assert "09:00" not in text
    assert "82.5" not in text
    assert "2026" not in text


def test_time_without_offset_and_missing_as_of_are_refused(
    app: tuple[TestClient, Any, Capture],
) -> None:
    body = {"instances": [{"age": 70.0, "series": {"lactate": [["2026-03-01T10:00:00", 2.0]]}}]}
    payload = _refused(app[0], body)
    assert _only(payload, "required")["field"] == "as_of"
    body["instances"][0]["as_of"] = "2026-03-01T14:00:00+01:00"
    problem = _only(_refused(app[0], body), "time_format")
    assert (problem["field"], problem["index"]) == ("series.lactate", 0)


def test_derived_feature_sent_directly_is_refused(app: tuple[TestClient, Any, Capture]) -> None:
    body = _instance({})
    body["instances"][0]["lactate_last"] = 9.0
    assert _only(_refused(app[0], body), "derived")["field"] == "lactate_last"


def test_v2_series_rules_are_the_same(app: tuple[TestClient, Any, Capture]) -> None:
    """OIP v2 tensors (seconds before as_of, oldest first) break the same rules, by name."""
    client = app[0]

    def body(times: list[float], values: list[Any], length: int) -> dict[str, Any]:
        inputs: list[dict[str, Any]] = [
            {"name": "age", "datatype": "FP32", "shape": [1], "data": [70.0]}
        ]
        for name in ("heart_rate", "resp_rate", "lactate", "sbp"):
            got = name == "heart_rate"
            inputs += [
                {
                    "name": f"{name}.values",
                    "datatype": "FP32",
                    "shape": [1, len(times)],
                    "data": values if got else [0.0] * len(times),
                },
                {
                    "name": f"{name}.times",
                    "datatype": "FP32",
                    "shape": [1, len(times)],
                    "data": times if got else [0.0] * len(times),
                },
                {
                    "name": f"{name}.lengths",
                    "datatype": "INT32",
                    "shape": [1],
                    "data": [length if got else 0],
                },
            ]
        return {"inputs": inputs}

    cases = [
        ([3600.0, 7200.0, 0.0], [80.0, 81.0, 82.0], 3, "unsorted", 1),
        ([7200.0, 3600.0, 3600.0], [80.0, 81.0, 82.0], 3, "duplicate_time", 2),
        ([7200.0, 3600.0, -60.0], [80.0, 81.0, 82.0], 3, "after_as_of", 2),
        ([60000.0, 3600.0, 0.0], [80.0, 81.0, 82.0], 3, "max_gap", 1),
        ([7200.0, 3600.0, 0.0], [80.0, None, 82.0], 3, "non_numeric", 1),
    ]
    for times, values, length, rule, index in cases:
        answer = client.post(f"/v2/models/{MODEL}/infer", json=body(times, values, length))
        assert answer.status_code == 422, (rule, answer.text)
        problem = _only(answer.json(), rule)
        assert (problem["field"], problem["index"]) == ("series.heart_rate", index)
    answer = client.post(f"/v2/models/{MODEL}/infer", json=body([7200.0, 0.0], [1.0, 2.0], 49))
    assert _only(answer.json(), "max_length")["field"] == "series.heart_rate"
    # padding past a length is never read: any value there is accepted and changes nothing
    a = client.post(f"/v2/models/{MODEL}/infer", json=body([7200.0, 3600.0, 0.0], [80, 81, 0], 2))
    b = client.post(f"/v2/models/{MODEL}/infer", json=body([7200.0, 3600.0, 9.0], [80, 81, 999], 2))
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.json()["outputs"] == b.json()["outputs"]


def test_fhir_series_breaking_a_rule_is_a_422_operation_outcome(
    app: tuple[TestClient, Any, Capture], trained: tuple[Path, TrajectorySpec, Samples]
) -> None:
    """An Observation later than the Bundle's timestamp (as_of): the OperationOutcome names the
    series, the point and the rule; one in a unit that cannot be converted names its entry."""
    client = app[0]
    samples = trained[2]
    row = int(np.flatnonzero(samples.batch["lactate"].lengths >= 2)[0])
    bundle = fhir_bundle(samples, row)
    lactate = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and e["resource"]["code"]["coding"][0]["code"] == "2524-7"
    ]
    original = lactate[-1]["effectiveDateTime"]
    lactate[-1]["effectiveDateTime"] = "2026-03-01T15:00:00+00:00"  # an hour after as_of
    answer = client.post(
        f"/v1/models/{MODEL}/predict",
        json=bundle,
        headers={"Content-Type": FHIR, "Accept": FHIR},
    )
    assert answer.status_code == 422, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    texts = [i["diagnostics"] for i in outcome["issue"]]
    index = len(lactate) - 1
    assert any(
        "series.lactate" in t and f"point {index}" in t and "(after_as_of)" in t for t in texts
    ), texts
    lactate[-1]["effectiveDateTime"] = original
    lactate[-1]["valueQuantity"].update(unit="kg", code="kg")
    answer = client.post(
        f"/v1/models/{MODEL}/predict",
        json=bundle,
        headers={"Content-Type": FHIR, "Accept": FHIR},
    )
    assert answer.status_code == 422, answer.text
    texts = [i["diagnostics"] for i in answer.json()["issue"]]
    assert any("'lactate'" in t and "(unit)" in t for t in texts), texts


def test_fhir_bundle_without_a_timestamp_is_refused(
    app: tuple[TestClient, Any, Capture], trained: tuple[Path, TrajectorySpec, Samples]
) -> None:
    """A series is measured back from as_of, the Bundle's timestamp: never the server clock,
    which would silently empty the window of a Bundle sent later."""
    bundle = fhir_bundle(trained[2], 0)
    del bundle["timestamp"]
    answer = app[0].post(
        f"/v1/models/{MODEL}/predict",
        json=bundle,
        headers={"Content-Type": FHIR, "Accept": FHIR},
    )
    assert answer.status_code == 422, answer.text
    issues = answer.json()["issue"]
    assert any("Bundle.timestamp" in (i.get("expression") or [""])[0] for i in issues), issues


def test_the_demo_writes_calls_that_work(tmp_path: Path) -> None:
    from medserve.faces.demo.trajectory import register_trajectory_demo

    home = tmp_path / "home"
    with registry_at(home) as registry:
        commands = register_trajectory_demo(registry, home, "http://127.0.0.1:8000")
    calls = [c for c in commands if c.startswith("curl ")]
    assert len(calls) == 3
    with serve(home, security=False) as (client, _):
        for command in calls:
            path = command.split("http://127.0.0.1:8000", 1)[1].split(" ", 1)[0]
            body = Path(command.rsplit("-d @", 1)[1]).read_bytes()
            kind = "application/fhir+json" if "fhir" in command else "application/json"
            headers = {"Content-Type": kind, "Accept": kind}
            answer = client.post(path, content=body, headers=headers)
            assert answer.status_code == 200, (command, answer.text)
            if kind == "application/fhir+json":
                resource = answer.json()["entry"][0]["resource"]
                assert resource["resourceType"] == "RiskAssessment"


def test_series_feature_model_explains_by_derived_feature(
    app: tuple[TestClient, Any, Capture], trained: tuple[Path, TrajectorySpec, Samples]
) -> None:
    client = app[0]
    _, spec, samples = trained
    body = {
        "instances": [records_instance(samples, _rows(samples)[0], spec.static)],
        "explain": True,
    }
    answer = client.post(f"/v1/models/{MODEL}/predict", json=body)
    assert answer.status_code == 200, answer.text
    text = str(answer.json()["explanation"])
    assert "heart_rate_slope_6h" in text

"""A binary classifier's served label follows the version's recorded operating threshold (the one
its card's sensitivity describes), and every answer names it; without a recorded threshold the
label is the runtime's."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
from tests.unit.serving.inprocess_app import MODEL, create_key, records, registry_at, serve

from medserve.core.loaded_model import matching_class_key, operating_point_of
from medserve.core.store.governance import GovernanceStore
from medserve.faces.demo.data import breast_cancer_frame

THRESHOLD = 0.9


def _record_threshold(home: Path, value: float, positive: str) -> None:
    record = {
        "threshold": {"value": value, "method": "highest threshold with sensitivity >= 0.7"},
        "outcome": {"positive_label": positive},
    }
    with registry_at(home) as registry:
        GovernanceStore(registry.store).save_training_run(MODEL, 1, record, "spec", actor="t")


def _rows(n: int) -> list[dict[str, float]]:
    frame = breast_cancer_frame()[0]
    return [{str(k): float(v) for k, v in r.items()} for r in frame.to_dict("records")[:n]]


def test_the_label_is_served_at_the_recorded_threshold_and_named(home: Path) -> None:
    _record_threshold(home, THRESHOLD, "malignant")
    headers = create_key(home, ["app"])
    rows = _rows(120)
    with serve(home, security=True) as (client, _):
        answer = client.post(
            f"/v1/models/{MODEL}/predict", json={"instances": rows}, headers=headers
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        v2 = client.post(
            f"/v2/models/{MODEL}/infer",
            json={
                "inputs": [
                    {"name": k, "shape": [1], "datatype": "FP64", "data": [v]}
                    for k, v in rows[0].items()
                ]
            },
            headers=headers,
        )
    assert body["threshold"]["value"] == THRESHOLD
    assert body["threshold"]["positive_class"] == "malignant"
    p = np.array([pred["probabilities"]["malignant"] for pred in body["predictions"]])
    labels = [pred["label"] for pred in body["predictions"]]
    expected = ["malignant" if v >= THRESHOLD else "benign" for v in p]
    assert labels == expected
    # the threshold matters for these rows: p >= 0.5 alone would label some differently
    assert any(0.5 <= v < THRESHOLD for v in p)
    assert v2.status_code == 200, v2.text
    assert v2.json()["parameters"]["threshold"] == THRESHOLD
    assert v2.json()["parameters"]["positive_class"] == "malignant"


def test_without_a_recorded_threshold_the_runtime_label_stands(home: Path) -> None:
    headers = create_key(home, ["app"])
    with serve(home, security=True) as (client, _):
        body = client.post(
            f"/v1/models/{MODEL}/predict", json={"instances": records(5)}, headers=headers
        ).json()
    assert "threshold" not in body
    for pred in body["predictions"]:
        best = max(pred["probabilities"], key=pred["probabilities"].get)
        assert pred["label"] == best


def test_the_operating_point_comes_from_the_config_then_the_training_record() -> None:
    version = SimpleNamespace(serving_config={"threshold": 0.2, "positive_class": "yes"})
    point = operating_point_of(version, {"threshold": {"value": 0.7, "method": "youden"}})
    assert point is not None
    assert (point.threshold, point.positive_class, point.source) == (0.2, "yes", "serving config")
    plain = SimpleNamespace(serving_config={})
    recorded = operating_point_of(plain, {"threshold": {"value": 0.7, "method": "youden"}})
    assert recorded is not None
    assert (recorded.threshold, recorded.source) == (0.7, "training: youden")
    not_binary = {"threshold": {"value": 0.5, "method": "not applicable"}}
    assert operating_point_of(plain, not_binary) is None
    assert operating_point_of(plain, None) is None
    assert matching_class_key("1", ["0.0", "1.0"]) == "1.0"  # a label 1 for float classes
    assert matching_class_key("yes", ["0.0", "1.0"]) is None

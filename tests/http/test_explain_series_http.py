"""``POST /v1/models/{name}/explain`` parses records as ``/predict`` does: a series-feature
model takes its reserved ``series``/``as_of`` keys there too (the plain validator refused them
as unknown fields), and a series breaking a rule is refused the same way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.unit.serving.inprocess_app import registry_at, serve

from medserve.faces.demo.trajectory import (
    MODEL,
    demo_spec,
    records_instance,
    register_trajectory_model,
)
from medserve.features.training.trajectories import Samples, TrajectorySpec


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, TrajectorySpec, Samples]]:
    home = tmp_path_factory.mktemp("explain-series") / "home"
    spec = demo_spec(stays=120, bootstrap=0)
    with registry_at(home) as registry:
        _, samples = register_trajectory_model(registry, spec)
    with serve(home, security=False) as (client, _):
        yield client, spec, samples


def _instance(served: tuple[TestClient, TrajectorySpec, Samples]) -> dict[str, Any]:
    _, spec, samples = served
    return records_instance(samples, 0, spec.static)


def test_explain_accepts_series_and_names_derived_features(
    served: tuple[TestClient, TrajectorySpec, Samples],
) -> None:
    client = served[0]
    instance = _instance(served)
    assert "series" in instance
    answer = client.post(f"/v1/models/{MODEL}/explain", json={"instances": [instance]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == MODEL
    assert "heart_rate_slope_6h" in str(body)


def test_explain_refuses_a_broken_series_like_predict(
    served: tuple[TestClient, TrajectorySpec, Samples],
) -> None:
    client = served[0]
    instance = _instance(served)
    name = next(iter(instance["series"]))
    points = instance["series"][name]
    assert len(points) >= 2
    instance["series"][name] = list(reversed(points))  # unsorted: a rule of the series
    explained = client.post(f"/v1/models/{MODEL}/explain", json={"instances": [instance]})
    predicted = client.post(f"/v1/models/{MODEL}/predict", json={"instances": [instance]})
    assert predicted.status_code == 422, predicted.text
    assert explained.status_code == 422, explained.text
    assert explained.json()["code"] == "validation_failed"
    assert explained.json()["details"] == predicted.json()["details"]
    assert any(d["rule"] == "unsorted" for d in explained.json()["details"])

"""``POST /v1/outcomes`` checks each outcome against the model version of the predictions it
matched (issue 16): a classifier takes its classes (a binary one also 0/1, false/true), a
regressor numbers; anything else is a 400 naming the item and the rule, and nothing of the
request is attached. The answer lists the items that matched nothing under ``unmatched``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.unit.serving.inprocess_app import (
    MODEL,
    copy_home,
    make_template,
    records,
    registry_at,
    serve,
)

from medserve.core.store.monitoring import MonitoringStore, outcome_problem
from medserve.faces.demo.data import breast_cancer_frame
from medserve.serving.extensions.monitoring import PREDICTION_LOG

REGRESSOR = "tumour-area"
REG_FEATURES = ["mean radius", "mean texture"]
WIDE = (datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(days=1))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The breast-cancer classifier, and a regressor of the tumour's area beside it."""
    from sklearn.linear_model import LinearRegression

    from medserve.core.registry.signature import infer_signature

    path = make_template(tmp_path_factory.mktemp("outcome-labels") / "home")
    X, _ = breast_cancer_frame()
    with registry_at(path) as registry:
        registry.register(
            REGRESSOR,
            LinearRegression().fit(X[REG_FEATURES], X["mean area"]),
            sample=X[REG_FEATURES],
            signature=infer_signature(X[REG_FEATURES], range_margin=0.5),
            alias="production",
        )
    return path


@pytest.fixture
def served(template: Path, tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    """The app with two logged classifier predictions for patient MRN-77 (``lab-1-0``,
    ``lab-1-1``) and one regressor prediction (``reg-1-0``)."""
    home = copy_home(template, tmp_path / "home")
    with serve(home, security=False) as (client, state):
        sent = [
            (MODEL, records(2), {"X-Request-ID": "lab-1", "X-Patient-ID": "MRN-77"}),
            (REGRESSOR, [{k: records(1)[0][k] for k in REG_FEATURES}], {"X-Request-ID": "reg-1"}),
        ]
        for model, rows, headers in sent:
            answer = client.post(
                f"/v1/models/{model}/predict", json={"instances": rows}, headers=headers
            )
            assert answer.status_code == 200, answer.text
        state.get(PREDICTION_LOG).flush()
        yield client, home


def _outcomes(home: Path, model: str = MODEL) -> list[Any]:
    with registry_at(home) as registry:
        return [p.outcome for p in MonitoringStore(registry.store).predictions(model, *WIDE)]


def _post(client: TestClient, items: list[dict[str, Any]]) -> Any:
    return client.post("/v1/outcomes", json={"outcomes": items})


def _by_patient(outcome: Any) -> dict[str, Any]:
    return {
        "patient_id": "MRN-77",
        "model": MODEL,
        "start": WIDE[0].isoformat(),
        "end": WIDE[1].isoformat(),
        "outcome": outcome,
    }


def test_classes_binary_indicators_and_numbers_are_attached(
    served: tuple[TestClient, Path],
) -> None:
    client, home = served
    answer = _post(
        client,
        [
            _by_patient(False),  # both rows of the request (then replaced below)
            {"prediction_id": "lab-1-0", "outcome": "malignant"},
            {"prediction_id": "lab-1-1", "outcome": 1},  # the positive class of a binary model
            {"prediction_id": "reg-1-0", "outcome": 812.5},
            {"prediction_id": "nobody-0", "outcome": "anything"},  # no model to check it with
        ],
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"matched": [2, 1, 1, 1, 0], "labelled": 5, "unmatched": [4]}
    assert _outcomes(home) == ["malignant", 1]
    assert _outcomes(home, REGRESSOR) == [812.5]


@pytest.mark.parametrize(
    ("item", "rule"),
    [
        ({"prediction_id": "lab-1-1", "outcome": "malignant-ish"}, "allowed_values"),
        ({"prediction_id": "lab-1-1", "outcome": 2}, "allowed_values"),
        ({"prediction_id": "reg-1-0", "outcome": "large"}, "type"),
        ({"prediction_id": "reg-1-0", "outcome": True}, "type"),
        (_by_patient("Quaxley relapse"), "allowed_values"),
    ],
)
def test_an_outcome_that_does_not_fit_the_model_is_a_400_naming_the_item(
    served: tuple[TestClient, Path], item: dict[str, Any], rule: str
) -> None:
    client, home = served
    answer = _post(client, [{"prediction_id": "lab-1-0", "outcome": "benign"}, item])
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["code"] == "invalid_request"
    assert body["details"] == [
        {
            "index": 1,
            "field": "outcomes[1].outcome",
            "rule": rule,
            "message": body["details"][0]["message"],
        }
    ]
    assert body["error"].startswith("outcomes[1].outcome: the outcome must be")
    if rule == "allowed_values":
        assert "classes benign, malignant" in body["error"]
        assert f"of {MODEL} v1" in body["error"]
    else:
        assert f"number for the regressor of {REGRESSOR} v1" in body["error"]
    assert "Quaxley" not in answer.text
    assert "large" not in answer.text
    assert _outcomes(home) == [None, None]  # the valid item 0 was not attached either
    assert _outcomes(home, REGRESSOR) == [None]


def test_many_refused_outcomes_are_counted_and_listed_up_to_twenty(
    served: tuple[TestClient, Path],
) -> None:
    client, _ = served
    answer = _post(client, [{"prediction_id": "lab-1-0", "outcome": "no"}] * 50)
    assert answer.status_code == 400
    body = answer.json()
    assert len(body["details"]) == 20
    assert [d["index"] for d in body["details"]] == list(range(20))
    assert "(and 49 more)" in body["error"]
    assert len(answer.content) < 8_000


def test_outcome_problem_rules() -> None:
    binary = {"task": "classification", "class_labels": ["benign", "malignant"]}
    three = {"task": "classification", "class_labels": [0, 1, 2]}
    regression = {"task": "regression", "class_labels": None}
    assert outcome_problem(binary, "benign") is None
    assert outcome_problem(binary, 0) is None
    assert outcome_problem(binary, True) is None
    assert outcome_problem(binary, None) is None  # no outcome fits anything
    assert outcome_problem(binary, "Benign") is not None
    assert outcome_problem(three, 2) is None
    assert outcome_problem(three, "2") is None
    assert outcome_problem(three, 3) is not None
    assert outcome_problem(three, True) is not None
    assert outcome_problem(regression, 3.5) is None
    assert outcome_problem(regression, -1) is None
    assert outcome_problem(regression, "3.5") is not None
    assert outcome_problem({}, "anything") is None  # a version without task or classes
    many = {"task": "classification", "class_labels": [f"class-{i}-{'x' * 80}" for i in range(500)]}
    problem = outcome_problem(many, "nope")
    assert problem is not None
    assert len(problem[1]) < 700
    assert "and 490 more" in problem[1]

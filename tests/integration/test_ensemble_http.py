"""Ensembles served by a real server process: the ensemble's answer is its combiner applied to
what each member answers when called on its own."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tests.support import ServerProcess, start_server

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.features.composition.register import register_ensemble

FRAME, TARGET = load_breast_cancer(as_frame=True, return_X_y=True)
LR_COLUMNS = list(FRAME.columns[:10])
RF_COLUMNS = list(FRAME.columns[5:15])
WEIGHTS = {"bc-lr": 2.0, "bc-rf": 1.0}
COEFS, INTERCEPT = {"bc-lr": 0.9, "bc-rf": 0.4}, -0.25


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("ensemble-home")
    registry = Registry.open(Settings(home=home))
    try:
        lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        lr.fit(FRAME[LR_COLUMNS], TARGET)
        registry.register("bc-lr", lr, sample=FRAME[LR_COLUMNS], alias="production")
        rf = RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0)
        rf.fit(FRAME[RF_COLUMNS], TARGET)
        registry.register("bc-rf", rf, sample=FRAME[RF_COLUMNS], alias="production")
        register_ensemble(
            registry,
            "bc-fusion",
            {"members": [{"model": m, "weight": w} for m, w in WEIGHTS.items()]},
            alias="production",
        )
        register_ensemble(
            registry,
            "bc-stack",
            {
                "members": [{"model": m, "weight": c} for m, c in COEFS.items()],
                "combiner": "logistic",
                "intercept": INTERCEPT,
            },
            alias="production",
        )
    finally:
        registry.close()
    proc = start_server(home, workers=1)
    yield proc
    proc.stop()


def _rows(columns: list[str], n: int = 40) -> list[dict[str, Any]]:
    # rows from both classes, so both labels are exercised
    picked = pd.concat([FRAME[TARGET == 0].head(n // 2), FRAME[TARGET == 1].head(n // 2)])
    return [{k: float(r[k]) for k in columns} for r in picked.to_dict(orient="records")]


def _predict(server: ServerProcess, model: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}/v1/models/{model}/predict",
        json={"instances": rows},
        headers=server.headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _member_answers(server: ServerProcess, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Each member called on its own, with only its own inputs."""
    return {
        "bc-lr": _predict(server, "bc-lr", [{k: r[k] for k in LR_COLUMNS} for r in rows])[
            "predictions"
        ],
        "bc-rf": _predict(server, "bc-rf", [{k: r[k] for k in RF_COLUMNS} for r in rows])[
            "predictions"
        ],
    }


def test_weighted_mean_response_equals_the_combiner_over_member_responses(
    server: ServerProcess,
) -> None:
    rows = _rows(list(dict.fromkeys(LR_COLUMNS + RF_COLUMNS)))
    body = _predict(server, "bc-fusion", rows)
    assert (body["model"], body["version"]) == ("bc-fusion", 1)
    assert body["ensemble"]["combiner"] == "weighted_mean"
    members = _member_answers(server, rows)
    total = sum(WEIGHTS.values())
    labels = set()
    for i, prediction in enumerate(body["predictions"]):
        for key in ("0", "1"):
            expected = (
                sum(w * members[m][i]["probabilities"][key] for m, w in WEIGHTS.items()) / total
            )
            assert prediction["probabilities"][key] == pytest.approx(expected, abs=1e-6)
            shares = [m["contribution"][key] for m in prediction["members"]]
            assert sum(shares) == pytest.approx(prediction["probabilities"][key], abs=1e-6)
        best = max(prediction["probabilities"], key=prediction["probabilities"].__getitem__)
        assert str(prediction["label"]) == best
        labels.add(prediction["label"])
        for member in prediction["members"]:
            name = member["model"]
            assert (member["version"], member["weight"]) == (1, WEIGHTS[name])
            assert member["probabilities"] == members[name][i]["probabilities"]
            for key in ("0", "1"):
                assert member["contribution"][key] == pytest.approx(
                    WEIGHTS[name] * members[name][i]["probabilities"][key] / total, abs=1e-9
                )
    assert labels == {0, 1}


def test_logistic_stacking_response_equals_the_combiner_over_member_responses(
    server: ServerProcess,
) -> None:
    rows = _rows(list(dict.fromkeys(LR_COLUMNS + RF_COLUMNS)))
    body = _predict(server, "bc-stack", rows)
    assert body["ensemble"]["intercept"] == INTERCEPT
    assert body["ensemble"]["positive_class"] == 1
    members = _member_answers(server, rows)

    def logit(p: float) -> float:
        p = min(max(p, 1e-6), 1 - 1e-6)
        return math.log(p / (1 - p))

    for i, prediction in enumerate(body["predictions"]):
        z = INTERCEPT + sum(
            c * logit(members[m][i]["probabilities"]["1"]) for m, c in COEFS.items()
        )
        assert prediction["probabilities"]["1"] == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-6)
        shares = [m["contribution"] for m in prediction["members"]]
        assert INTERCEPT + sum(shares) == pytest.approx(z, abs=1e-6)


def test_v2_infer_and_metadata_show_each_member(server: ServerProcess) -> None:
    metadata = httpx.get(
        f"{server.url}/v2/models/bc-fusion", headers=server.headers, timeout=30
    ).json()
    outputs = [o["name"] for o in metadata["outputs"]]
    assert outputs == [
        "label",
        "probabilities",
        "member.bc-lr.probabilities",
        "member.bc-lr.contribution",
        "member.bc-rf.probabilities",
        "member.bc-rf.contribution",
    ]
    features = [i["name"] for i in metadata["inputs"]]
    rows = _rows(features, n=6)
    request = {
        "id": "ens-1",
        "inputs": [
            {
                "name": "input",
                "shape": [len(rows), len(features)],
                "datatype": "FP32",
                "data": [[r[f] for f in features] for r in rows],
            }
        ],
    }
    response = httpx.post(
        f"{server.url}/v2/models/bc-fusion/infer", json=request, headers=server.headers, timeout=30
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "ens-1"
    tensors = {t["name"]: t for t in body["outputs"]}
    assert set(tensors) == set(outputs)
    records = _predict(server, "bc-fusion", rows)["predictions"]
    probabilities = tensors["probabilities"]["data"]
    for i, prediction in enumerate(records):
        assert probabilities[2 * i : 2 * i + 2] == pytest.approx(
            [prediction["probabilities"]["0"], prediction["probabilities"]["1"]], abs=1e-7
        )
        lr_share = tensors["member.bc-lr.contribution"]["data"][2 * i : 2 * i + 2]
        rf_share = tensors["member.bc-rf.contribution"]["data"][2 * i : 2 * i + 2]
        assert [a + b for a, b in zip(lr_share, rf_share, strict=True)] == pytest.approx(
            probabilities[2 * i : 2 * i + 2], abs=1e-6
        )
    assert tensors["member.bc-rf.probabilities"]["shape"] == [len(rows), 2]
    selected = httpx.post(
        f"{server.url}/v2/models/bc-fusion/infer",
        json={**request, "outputs": [{"name": "member.bc-rf.probabilities"}]},
        headers=server.headers,
        timeout=30,
    ).json()
    assert [t["name"] for t in selected["outputs"]] == ["member.bc-rf.probabilities"]

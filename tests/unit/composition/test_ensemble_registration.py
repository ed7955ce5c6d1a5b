"""Registering, loading and running ensembles against a real registry and artifact store."""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from medserve.core.errors import (
    AliasNotFoundError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    VersionNotFoundError,
)
from medserve.core.loaded_model import LoadedModel, load_version
from medserve.core.registry.service import Registry
from medserve.core.registry.signature import FeatureSpec, Signature
from medserve.core.settings import Settings
from medserve.core.store.monitoring import MonitoringStore
from medserve.features.composition.register import register_ensemble
from medserve.serving.protocols import oip_v2


def _frame(n: int = 300, seed: int = 7) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 90, n)
    lactate = rng.gamma(2.0, 1.0, n)
    heart_rate = rng.normal(90, 15, n)
    triage = rng.choice(["green", "amber", "red"], n)
    score = 0.03 * (age - 55) + 0.8 * (lactate - 2) + 0.04 * (heart_rate - 90)
    score = score + np.where(triage == "red", 1.0, 0.0) + rng.normal(0, 0.5, n)
    frame = pd.DataFrame(
        {"age": age, "lactate": lactate, "heart_rate": heart_rate, "triage": triage}
    )
    return frame, pd.Series(np.where(score > 0, "high", "low")), pd.Series(score)


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    return _frame()


@pytest.fixture(scope="module")
def reg(
    tmp_path_factory: pytest.TempPathFactory, data: tuple[pd.DataFrame, pd.Series, pd.Series]
) -> Iterator[Registry]:
    """Members: two tabular risk models, a model with a string input, two regressors, and
    models that cannot join them (other labels, a conflicting input declaration)."""
    registry = Registry.open(Settings(home=tmp_path_factory.mktemp("ensemble-home")))
    X, y, score = data
    a, b, t = ["age", "lactate"], ["lactate", "heart_rate"], ["triage", "lactate"]
    registry.register("risk-a", LogisticRegression().fit(X[a], y), sample=X[a], alias="production")
    rf = RandomForestClassifier(n_estimators=15, max_depth=4, random_state=0).fit(X[b], y)
    registry.register("risk-b", rf, sample=X[b], alias="production")
    triage = make_pipeline(
        make_column_transformer((OneHotEncoder(), ["triage"]), remainder="passthrough"),
        LogisticRegression(),
    ).fit(X[t], y)
    registry.register("triage-risk", triage, sample=X[t], alias="production")
    registry.register("score-a", LinearRegression().fit(X[a], score), sample=X[a])
    registry.register("score-b", LinearRegression().fit(X[b], score), sample=X[b])
    registry.register("numeric-labels", LogisticRegression().fit(X[a], y == "high"), sample=X[a])
    imputing = Signature(
        inputs=[
            FeatureSpec(name="age"),
            FeatureSpec(name="lactate", missing="impute", impute_value=1.0),
        ]
    )
    registry.register("imputes-lactate", LogisticRegression().fit(X[a], y), signature=imputing)
    yield registry
    registry.close()


def _rows(frame: pd.DataFrame, columns: list[str], n: int = 25) -> list[dict[str, Any]]:
    return [{k: r[k] for k in columns} for r in frame.iloc[:n].to_dict(orient="records")]


def _member_probabilities(
    reg: Registry, model: str, version: int, rows: list[dict[str, Any]]
) -> list[dict[str, float]]:
    loaded = load_version(reg.artifacts, reg.store.get_version(model, version))
    mine = [{k: row[k] for k in loaded.signature.feature_names} for row in rows]
    return [p["probabilities"] for p in loaded.predict_records(mine)["predictions"]]


def test_weighted_mean_equals_the_combiner_applied_to_each_member(
    reg: Registry, data: tuple[pd.DataFrame, pd.Series, pd.Series]
) -> None:
    version = register_ensemble(
        reg,
        "fusion",
        {
            "members": [
                {"model": "risk-a", "weight": 2},
                {"model": "risk-b", "version": 1},
                {"model": "triage-risk", "version": "1", "weight": 1},
            ]
        },
        alias="staging",
    )
    assert version.flavor == "ensemble"
    assert version.runtime == "medserve-ensemble"
    assert "risk-a v1 (onnx)" in version.runtime_reason
    assert reg.store.get_alias("fusion", "staging") == 1
    sig = Signature.model_validate(version.signature)
    assert sig.feature_names == ["age", "lactate", "heart_rate", "triage"]  # first-seen union
    assert not sig.all_numeric  # the string input makes it an object matrix
    assert sig.task == "classification"
    assert sorted(sig.class_labels or []) == ["high", "low"]
    ensemble = load_version(reg.artifacts, version)
    rows = _rows(data[0], sig.feature_names)
    response = ensemble.predict_records(rows)
    assert response["ensemble"]["combiner"] == "weighted_mean"
    members = {
        name: _member_probabilities(reg, name, 1, rows)
        for name in ("risk-a", "risk-b", "triage-risk")
    }
    weights = {"risk-a": 2.0, "risk-b": 1.0, "triage-risk": 1.0}
    for i, prediction in enumerate(response["predictions"]):
        for label in ("high", "low"):
            expected = sum(weights[m] * members[m][i][label] for m in weights) / 4
            assert prediction["probabilities"][label] == pytest.approx(expected, abs=1e-6)
        assert prediction["label"] == max(
            prediction["probabilities"], key=prediction["probabilities"].__getitem__
        )
        assert [m["model"] for m in prediction["members"]] == list(weights)
        for member in prediction["members"]:
            assert member["version"] == 1
            assert member["probabilities"] == pytest.approx(members[member["model"]][i])
            for label in ("high", "low"):
                share = weights[member["model"]] * member["probabilities"][label] / 4
                assert member["contribution"][label] == pytest.approx(share, abs=1e-9)
        for label in ("high", "low"):
            total = sum(m["contribution"][label] for m in prediction["members"])
            assert total == pytest.approx(prediction["probabilities"][label], abs=1e-6)


def test_logistic_stacking_with_threshold(
    reg: Registry, data: tuple[pd.DataFrame, pd.Series, pd.Series]
) -> None:
    version = register_ensemble(
        reg,
        "stacked",
        {
            "members": [{"model": "risk-a", "weight": 0.8}, {"model": "risk-b", "weight": -0.3}],
            "combiner": "logistic",
            "intercept": 0.2,
            "threshold": 0.3,
            "positive_class": "high",
        },
    )
    ensemble = load_version(reg.artifacts, version)
    rows = _rows(data[0], ensemble.signature.feature_names, n=60)
    response = ensemble.predict_records(rows)
    assert response["ensemble"]["positive_class"] == "high"
    assert response["ensemble"]["intercept"] == 0.2
    a = _member_probabilities(reg, "risk-a", 1, rows)
    b = _member_probabilities(reg, "risk-b", 1, rows)
    labels = set()
    for i, prediction in enumerate(response["predictions"]):
        pa = min(max(a[i]["high"], 1e-6), 1 - 1e-6)
        pb = min(max(b[i]["high"], 1e-6), 1 - 1e-6)
        z = 0.2 + 0.8 * math.log(pa / (1 - pa)) - 0.3 * math.log(pb / (1 - pb))
        p = 1 / (1 + math.exp(-z))
        assert prediction["probabilities"]["high"] == pytest.approx(p, abs=1e-6)
        assert prediction["probabilities"]["low"] == pytest.approx(1 - p, abs=1e-6)
        assert prediction["label"] == ("high" if p >= 0.3 else "low")
        labels.add(prediction["label"])
        shares = [m["contribution"] for m in prediction["members"]]
        assert 0.2 + sum(shares) == pytest.approx(z, abs=1e-9)
    assert labels == {"high", "low"}


def test_regressors_are_averaged(
    reg: Registry, data: tuple[pd.DataFrame, pd.Series, pd.Series]
) -> None:
    version = register_ensemble(
        reg,
        "score-mean",
        {"members": [{"model": "score-a", "version": 1}, {"model": "score-b", "version": 1}]},
        sample=data[0][["age", "lactate", "heart_rate"]],
    )
    reference, importance = MonitoringStore(reg.store).reference("score-mean", 1)
    assert set(reference["features"]) == {"age", "lactate", "heart_rate"}  # drift reference
    assert importance is not None
    ensemble = load_version(reg.artifacts, version)
    assert ensemble.signature.all_numeric
    rows = _rows(data[0], ensemble.signature.feature_names)
    out = ensemble.predict_records(rows)["predictions"]
    values = {}
    for name in ("score-a", "score-b"):
        loaded = load_version(reg.artifacts, reg.store.get_version(name, 1))
        mine = [{k: r[k] for k in loaded.signature.feature_names} for r in rows]
        values[name] = [p["value"] for p in loaded.predict_records(mine)["predictions"]]
    for i, prediction in enumerate(out):
        assert prediction["value"] == pytest.approx(
            (values["score-a"][i] + values["score-b"][i]) / 2, rel=1e-5
        )
        assert [m["value"] for m in prediction["members"]] == pytest.approx(
            [values["score-a"][i], values["score-b"][i]]
        )
        assert sum(m["contribution"] for m in prediction["members"]) == pytest.approx(
            prediction["value"], rel=1e-5
        )


def test_an_alias_is_pinned_to_its_number_at_registration(
    reg: Registry, data: tuple[pd.DataFrame, pd.Series, pd.Series]
) -> None:
    X, y, _ = data
    version = register_ensemble(
        reg, "pinned", {"members": [{"model": "risk-a"}, {"model": "risk-b"}]}
    )
    cols = ["age", "lactate"]
    newer = reg.register("risk-a", LogisticRegression(C=0.01).fit(X[cols], y), sample=X[cols])
    reg.store.set_alias("risk-a", "production", newer.version, actor="t", reason="test")
    try:
        ensemble = load_version(reg.artifacts, reg.store.get_version("pinned", version.version))
        rows = _rows(X, ensemble.signature.feature_names, 5)
        predictions = ensemble.predict_records(rows)["predictions"]
        v1 = _member_probabilities(reg, "risk-a", 1, rows)
        assert v1 != _member_probabilities(reg, "risk-a", newer.version, rows)
        for prediction, expected in zip(predictions, v1, strict=True):
            member = prediction["members"][0]
            assert (member["model"], member["version"]) == ("risk-a", 1)
            assert member["probabilities"] == pytest.approx(expected)
    finally:
        reg.store.set_alias("risk-a", "production", 1, actor="t", reason="test")


def test_v2_metadata_and_outputs_list_each_member(
    reg: Registry, data: tuple[pd.DataFrame, pd.Series, pd.Series]
) -> None:
    version = register_ensemble(
        reg, "v2-fusion", {"members": [{"model": "risk-a"}, {"model": "risk-b"}]}
    )
    ensemble = load_version(reg.artifacts, version)
    meta = oip_v2.model_metadata(ensemble, [])
    assert [o["name"] for o in meta["outputs"]] == [
        "label",
        "probabilities",
        "member.risk-a.probabilities",
        "member.risk-a.contribution",
        "member.risk-b.probabilities",
        "member.risk-b.contribution",
    ]
    assert meta["platform"] == "medserve-ensemble"
    X = ensemble.validator.records_to_matrix(_rows(data[0], ensemble.signature.feature_names, 3))
    outputs = ensemble.predict(X)
    response = oip_v2.build_infer_response(ensemble, outputs, {}, None)
    by_name = {t["name"]: t for t in response["outputs"]}
    assert by_name["member.risk-a.probabilities"]["shape"] == [3, 2]
    assert by_name["member.risk-b.contribution"]["datatype"] == "FP64"


def test_plain_models_have_no_member_reporting(
    reg: Registry, data: tuple[pd.DataFrame, pd.Series, pd.Series]
) -> None:
    loaded = load_version(reg.artifacts, reg.store.get_version("risk-a", 1))
    assert isinstance(loaded, LoadedModel)
    assert loaded.members is None
    response = loaded.predict_records(_rows(data[0], ["age", "lactate"], 2))
    assert "ensemble" not in response
    assert set(response["predictions"][0]) == {"label", "probabilities"}


@pytest.mark.parametrize(
    ("members", "error", "message"),
    [
        ([{"model": "nope"}, {"model": "risk-b"}], ModelNotFoundError, "ensemble member 'nope'"),
        (
            [{"model": "risk-a", "version": 99}, {"model": "risk-b"}],
            VersionNotFoundError,
            "ensemble member 'risk-a'",
        ),
        (
            [{"model": "risk-a", "version": "canary"}, {"model": "risk-b"}],
            AliasNotFoundError,
            "ensemble member 'risk-a'",
        ),
        (
            [{"model": "risk-a"}, {"model": "numeric-labels", "version": 1}],
            InvalidRequestError,
            r"same class labels: 'risk-a' v1 has \['high', 'low'\], 'numeric-labels' v1 has "
            r"\[False, True\]",
        ),
        (
            [{"model": "risk-a"}, {"model": "score-b", "version": 1}],
            InvalidRequestError,
            "must share a task: 'risk-a' v1 is classification, 'score-b' v1 is regression",
        ),
        (
            [{"model": "risk-a"}, {"model": "imputes-lactate", "version": 1}],
            InvalidRequestError,
            "declare input 'lactate' incompatibly: missing is 'reject' for 'risk-a' v1 but "
            "'impute' for 'imputes-lactate' v1",
        ),
        (
            [{"model": "risk-a", "version": 1}, {"model": "risk-a", "version": "production"}],
            InvalidRequestError,
            "listed twice",
        ),
    ],
)
def test_members_that_cannot_be_combined_are_refused(
    reg: Registry, members: list[dict[str, Any]], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        register_ensemble(reg, "refused", {"members": members})
    with pytest.raises(ModelNotFoundError):
        reg.store.get_model("refused")  # nothing was registered


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {
                "combiner": "logistic",
                "members": [{"model": "score-a", "version": 1}, {"model": "score-b", "version": 1}],
            },
            "logistic combiner .* needs binary classifiers",
        ),
        (
            {
                "threshold": 0.5,
                "members": [{"model": "score-a", "version": 1}, {"model": "score-b", "version": 1}],
            },
            "threshold needs binary classifiers",
        ),
        (
            {"positive_class": "maybe", "members": [{"model": "risk-a"}, {"model": "risk-b"}]},
            "positive_class 'maybe' is not one of the class labels",
        ),
    ],
)
def test_combiner_options_that_do_not_fit_the_members(
    reg: Registry, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        register_ensemble(reg, "refused", spec)


def test_an_ensemble_cannot_be_a_member(reg: Registry) -> None:
    register_ensemble(reg, "inner", {"members": [{"model": "risk-a"}, {"model": "risk-b"}]})
    with pytest.raises(InvalidRequestError, match="'inner' version 1 is itself an ensemble"):
        register_ensemble(
            reg, "outer", {"members": [{"model": "inner", "version": 1}, {"model": "risk-a"}]}
        )


def test_a_tampered_member_fails_the_ensemble_load_naming_the_member(
    registry: Registry, data: tuple[pd.DataFrame, pd.Series, pd.Series]
) -> None:
    X, y, _ = data
    cols = ["age", "lactate"]
    registry.register("a", LogisticRegression().fit(X[cols], y), sample=X[cols])
    registry.register("b", LogisticRegression(C=0.1).fit(X[cols], y), sample=X[cols])
    version = register_ensemble(
        registry, "ab", {"members": [{"model": "a", "version": 1}, {"model": "b", "version": 1}]}
    )
    path: Path = registry.artifacts.path(registry.store.get_version("b", 1).artifact_sha256)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(
        ModelLoadError, match=r"ensemble member 'b' version 1 failed to load: .*integrity"
    ):
        load_version(registry.artifacts, version)

"""The data plane with a mixed-type model: INT64, BOOL, BYTES and FP64 tensors, records too."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from medserve.core.errors import InvalidRequestError, ValidationFailedError
from medserve.core.registry.service import Registry
from medserve.serving.data_plane import DataPlane
from medserve.serving.model_manager import ModelManager


@pytest.fixture
def frame() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 300
    df = pd.DataFrame(
        {
            "age": rng.integers(18, 95, n),
            "sex": rng.choice(["female", "male"], n),
            "smoker": rng.random(n) < 0.3,
            "bmi": rng.normal(27, 4, n),
        }
    )
    logit = 0.04 * (df.age - 50) + 0.8 * df.smoker + 0.1 * (df.bmi - 27) + (df.sex == "male") * 0.3
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return df, y


@pytest.fixture
async def plane(registry: Registry, frame: tuple[pd.DataFrame, np.ndarray]) -> DataPlane:
    df, y = frame
    model = make_pipeline(
        ColumnTransformer(
            [
                ("num", StandardScaler(), ["age", "bmi"]),
                ("cat", OneHotEncoder(), ["sex"]),
                ("flag", "passthrough", ["smoker"]),
            ]
        ),
        LogisticRegression(),
    ).fit(df, y)
    registry.register("risk", model, sample=df, alias="production")
    manager = ModelManager(registry.store, registry.artifacts)
    manager.start(poll_interval_s=0)
    plane = DataPlane(manager)
    plane.reference = model  # type: ignore[attr-defined]
    return plane


async def test_per_feature_tensors_of_every_type(
    plane: DataPlane, frame: tuple[pd.DataFrame, np.ndarray]
) -> None:
    df, _ = frame
    rows = df.iloc[:4]
    body = {
        "inputs": [
            {"name": "age", "shape": [4], "datatype": "INT64", "data": rows.age.tolist()},
            {"name": "sex", "shape": [4, 1], "datatype": "BYTES", "data": [[s] for s in rows.sex]},
            {"name": "smoker", "shape": [4], "datatype": "BOOL", "data": rows.smoker.tolist()},
            {"name": "bmi", "shape": [4], "datatype": "FP64", "data": rows.bmi.tolist()},
        ]
    }
    response = await plane.infer_v2("risk", None, body)
    outputs = {o["name"]: o for o in response["outputs"]}
    expected = plane.reference.predict_proba(rows)  # type: ignore[attr-defined]
    got = np.asarray(outputs["probabilities"]["data"]).reshape(4, 2)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert outputs["label"]["datatype"] == "INT64"

    records = await plane.predict_records(
        "risk", None, {"instances": rows.to_dict(orient="records")}
    )
    assert [p["label"] for p in records["predictions"]] == list(plane.reference.predict(rows))  # type: ignore[attr-defined]


async def test_type_and_category_errors_name_the_field(plane: DataPlane) -> None:
    body = {
        "inputs": [
            {"name": "age", "shape": [1], "datatype": "INT64", "data": [40]},
            {"name": "sex", "shape": [1], "datatype": "BYTES", "data": ["unknown"]},
            {"name": "smoker", "shape": [1], "datatype": "BOOL", "data": [False]},
            {"name": "bmi", "shape": [1], "datatype": "FP64", "data": [22.0]},
        ]
    }
    with pytest.raises(ValidationFailedError) as caught:
        await plane.infer_v2("risk", None, body)
    assert [(d["field"], d["rule"]) for d in caught.value.details] == [("sex", "category")]
    body["inputs"][1] = {"name": "sex", "shape": [1], "datatype": "BYTES", "data": [3]}
    with pytest.raises(InvalidRequestError, match="BYTES data must hold strings"):
        await plane.infer_v2("risk", None, body)
    body["inputs"][1] = {"name": "height", "shape": [1], "datatype": "FP32", "data": [1.8]}
    with pytest.raises(InvalidRequestError, match="not an input of this model"):
        await plane.infer_v2("risk", None, body)


async def test_binary_tensor_extension_decodes_bytes_and_numbers(
    plane: DataPlane, frame: tuple[pd.DataFrame, np.ndarray]
) -> None:
    df, _ = frame
    row = df.iloc[:2]
    sex = b"".join(len(s).to_bytes(4, "little") + s.encode() for s in row.sex)
    age = np.asarray(row.age, dtype="<i8").tobytes()
    smoker = np.asarray(row.smoker, dtype=np.bool_).tobytes()
    bmi = np.asarray(row.bmi, dtype="<f8").tobytes()
    body = {
        "inputs": [
            {
                "name": "age",
                "shape": [2],
                "datatype": "INT64",
                "parameters": {"binary_data_size": len(age)},
            },
            {
                "name": "sex",
                "shape": [2],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(sex)},
            },
            {
                "name": "smoker",
                "shape": [2],
                "datatype": "BOOL",
                "parameters": {"binary_data_size": len(smoker)},
            },
            {
                "name": "bmi",
                "shape": [2],
                "datatype": "FP64",
                "parameters": {"binary_data_size": len(bmi)},
            },
        ]
    }
    response = await plane.infer_v2("risk", None, body, age + sex + smoker + bmi)
    probs = next(o for o in response["outputs"] if o["name"] == "probabilities")
    expected = plane.reference.predict_proba(row)  # type: ignore[attr-defined]
    np.testing.assert_allclose(np.asarray(probs["data"]).reshape(2, 2), expected, atol=1e-5)

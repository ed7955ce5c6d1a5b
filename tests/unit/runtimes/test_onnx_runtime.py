"""OnnxRuntime on ONNX models that did not come through medserve's converter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression

from medserve.core.errors import ModelLoadError
from medserve.core.runtimes.base import Runtime, TensorSpec
from medserve.core.runtimes.onnx_runtime import OnnxRuntime, session_options

Data = tuple[pd.DataFrame, pd.Series]


def test_session_defaults_to_one_sequential_thread() -> None:
    opts = session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.inter_op_num_threads == 1
    assert session_options(3).intra_op_num_threads == 3


def test_plain_skl2onnx_classifier_reads_labels_from_the_graph(
    cancer: Data, cancer_matrix: np.ndarray
) -> None:
    features, y = cancer
    named = np.where(y.to_numpy() == 1, "benign", "malignant")
    model = RandomForestClassifier(n_estimators=30, random_state=0).fit(features.to_numpy(), named)
    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 30]))],
        options={"zipmap": False},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    runtime = OnnxRuntime(onx.SerializeToString())
    assert isinstance(runtime, Runtime)
    meta = runtime.metadata()
    assert meta.task == "classification"
    assert meta.class_labels == ["benign", "malignant"]
    assert meta.n_features == 30
    assert meta.outputs == [
        TensorSpec("label", "BYTES", [-1]),
        TensorSpec("probabilities", "FP32", [-1, 2]),
    ]
    out = runtime.predict(cancer_matrix)
    np.testing.assert_array_equal(out["label"].astype(str), model.predict(cancer_matrix))
    assert out["probabilities"].dtype == np.float32
    np.testing.assert_allclose(out["probabilities"], model.predict_proba(cancer_matrix), atol=1e-5)


def test_double_input_is_cast_from_the_float32_matrix(
    diabetes: Data, diabetes_matrix: np.ndarray
) -> None:
    features, y = diabetes
    model = LinearRegression().fit(features.to_numpy(), y)
    onx = convert_sklearn(
        model, initial_types=[("x", DoubleTensorType([None, 10]))], target_opset=17
    )
    runtime = OnnxRuntime(onx.SerializeToString())
    meta = runtime.metadata()
    assert meta.task == "regression"
    assert meta.outputs == [TensorSpec("value", "FP64", [-1])]
    out = runtime.predict(diabetes_matrix)
    assert out["value"].shape == (len(features),)
    np.testing.assert_allclose(
        out["value"], model.predict(diabetes_matrix.astype(np.float64)), rtol=1e-9
    )


def test_one_input_per_column_splits_the_matrix(cancer: Data, cancer_matrix: np.ndarray) -> None:
    features, y = cancer
    model = LogisticRegression(max_iter=5000).fit(features.to_numpy()[:, :3], y)
    onx = convert_sklearn(
        model,
        initial_types=[("x", FloatTensorType([None, 3]))],
        options={"zipmap": False},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # wrap: three (n, 1) inputs concatenated in front of the converted graph
    import onnx
    from onnx import helper

    graph = onx.graph
    cols = ["a", "b", "c"]
    new_inputs = [helper.make_tensor_value_info(c, onnx.TensorProto.FLOAT, [None, 1]) for c in cols]
    concat = helper.make_node("Concat", cols, ["x"], axis=1)
    del graph.input[:]
    graph.input.extend(new_inputs)
    graph.node.insert(0, concat)
    runtime = OnnxRuntime(onx.SerializeToString())
    assert runtime.metadata().n_features == 3
    single = cancer_matrix[:1, :3].copy()
    out = runtime.predict(single)
    assert out["label"].shape == (1,)
    assert out["probabilities"].shape == (1, 2)
    full = runtime.predict(cancer_matrix[:, :3])
    np.testing.assert_array_equal(full["label"], model.predict(cancer_matrix[:, :3]))


def test_zipmap_output_is_refused_with_advice(cancer: Data) -> None:
    features, y = cancer
    model = LogisticRegression(max_iter=5000).fit(features.to_numpy(), y)
    onx = convert_sklearn(
        model, initial_types=[("x", FloatTensorType([None, 30]))], target_opset=17
    )
    with pytest.raises(ModelLoadError, match="zipmap"):
        OnnxRuntime(onx.SerializeToString())


def test_garbage_bytes_fail_to_load_cleanly() -> None:
    with pytest.raises(ModelLoadError, match="onnxruntime could not load"):
        OnnxRuntime(b"definitely not a model")

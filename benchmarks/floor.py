"""The in-process floor: what one prediction costs with no server at all.

onnxruntime on one thread is what a server can get down to per row; sklearn's own predict
is what a server that calls the estimator directly pays before any HTTP.
"""

from __future__ import annotations

import timeit
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np


def _best_us(fn: Callable[[], object]) -> float:
    """``python -m timeit`` style: the best of 5 repeats, per call, in microseconds."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=5, number=number)) / number * 1e6


def _onnx_session(model: Any, width: int) -> Any:
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, width]))],
        options={"zipmap": False},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        onx.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def measure_floor(models: dict[str, Any], x: Any) -> dict[str, dict[str, float]]:
    """Per model: ``onnxruntime_us`` and ``sklearn_us`` for one row."""
    row_frame = x.iloc[:1]
    row = row_frame.to_numpy(dtype=np.float32)
    out: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        session = _onnx_session(model, row.shape[1])
        feed = {"input": row}

        def onnx_once(session: Any = session, feed: dict[str, Any] = feed) -> object:
            return session.run(None, feed)

        def sklearn_once(model: Any = model) -> object:
            return model.predict(row_frame)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[name] = {
                "onnxruntime_us": _best_us(onnx_once),
                "sklearn_us": _best_us(sklearn_once),
            }
    return out

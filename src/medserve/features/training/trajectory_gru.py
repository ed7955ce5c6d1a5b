"""A GRU over patient series: its numpy reference, and its ONNX graph for the trajectory flavor.

:class:`GruModel` holds the weights in ONNX's layout (gates z, r, h; ``linear_before_reset`` as
PyTorch's GRU uses it, so a torch-trained GRU exports into the same graph, see
``docs/trajectories.md``). Per series, each measurement is the step input ``[(value - centre) /
scale, hours before as_of / 24]``; the last hidden state of each series (ONNX's GRU with
``sequence_lens``: padding is never read), with the static inputs, goes through a logistic head.
:meth:`GruModel.predict` is the reference the exported graph is checked against, in numpy
(float64), so tests and the recipe need no deep-learning framework.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medserve.core.registry.signature import FeatureSpec, Signature
from medserve.core.runtimes.trajectory_runtime import META_TRAJECTORY, STATIC_INPUT
from medserve.core.series import SECONDS_PER_HOUR, Padded, SeriesSpec, padded_columns

_OPSET = 17
TIME_SCALE_HOURS = 24.0


@dataclass
class SeriesGru:
    """One series' GRU: ``W`` ``[3H, 2]``, ``R`` ``[3H, H]``, ``B`` ``[6H]`` (ONNX layout)."""

    name: str
    max_length: int
    W: np.ndarray
    R: np.ndarray
    B: np.ndarray
    centre: float = 0.0
    scale: float = 1.0

    @property
    def hidden(self) -> int:
        return int(self.R.shape[1])


@dataclass
class GruModel:
    series: list[SeriesGru]
    head_w: np.ndarray  # [sum(H) + n_static]
    head_b: float
    n_static: int = 0
    linear_before_reset: bool = True
    class_labels: list[Any] = field(default_factory=lambda: [0, 1])

    @classmethod
    def random(
        cls,
        series: list[tuple[str, int]],
        hidden: int = 8,
        n_static: int = 0,
        seed: int = 0,
        linear_before_reset: bool = True,
    ) -> GruModel:
        """Small random weights (tests, and a starting point)."""
        rng = np.random.default_rng(seed)
        grus = [
            SeriesGru(
                name,
                width,
                rng.normal(0, 0.5, (3 * hidden, 2)),
                rng.normal(0, 0.5, (3 * hidden, hidden)),
                rng.normal(0, 0.1, 6 * hidden),
            )
            for name, width in series
        ]
        head = rng.normal(0, 0.5, hidden * len(series) + n_static)
        return cls(grus, head, float(rng.normal(0, 0.1)), n_static, linear_before_reset)

    # -- the numpy reference -------------------------------------------------------------------
    def steps(self, gru: SeriesGru, padded: Padded) -> np.ndarray:
        """The step inputs ``[n, width, 2]``."""
        values = (padded.values - gru.centre) / gru.scale
        hours = padded.times / SECONDS_PER_HOUR / TIME_SCALE_HOURS
        return np.stack([values, hours], axis=2)

    def last_hidden(self, gru: SeriesGru, padded: Padded) -> np.ndarray:
        x = self.steps(gru, padded)
        n, width, _ = x.shape
        H = gru.hidden
        Wz, Wr, Wh = gru.W[:H], gru.W[H : 2 * H], gru.W[2 * H :]
        Rz, Rr, Rh = gru.R[:H], gru.R[H : 2 * H], gru.R[2 * H :]
        wbz, wbr, wbh, rbz, rbr, rbh = np.split(gru.B, 6)
        h = np.zeros((n, H))
        for t in range(width):
            active = (t < padded.lengths)[:, None]
            xt = np.where(active, x[:, t, :], 0.0)
            z = _sigmoid(xt @ Wz.T + h @ Rz.T + wbz + rbz)
            r = _sigmoid(xt @ Wr.T + h @ Rr.T + wbr + rbr)
            if self.linear_before_reset:
                candidate = np.tanh(xt @ Wh.T + r * (h @ Rh.T + rbh) + wbh)
            else:
                candidate = np.tanh(xt @ Wh.T + (r * h) @ Rh.T + rbh + wbh)
            new = (1 - z) * candidate + z * h
            h = np.where(active, new, h)
        return h

    def risk(self, static: np.ndarray, batch: dict[str, Padded]) -> np.ndarray:
        parts = [self.last_hidden(g, batch[g.name]) for g in self.series]
        if self.n_static:
            parts.append(np.asarray(static, dtype=np.float64))
        features = np.concatenate(parts, axis=1)
        return _sigmoid(features @ self.head_w + self.head_b)

    def predict(self, static: np.ndarray, batch: dict[str, Padded]) -> np.ndarray:
        """``[n, 2]`` probabilities (not the event, the event), as the graph outputs them."""
        p = self.risk(static, batch)
        return np.column_stack([1 - p, p])

    def signature(
        self, series: list[SeriesSpec], static: list[FeatureSpec] | None = None
    ) -> Signature:
        """The signature to register the exported graph with: the static inputs, then the
        padded layout (``core.series.padded_columns``), which the data plane fills from the
        series of a request and the trajectory runtime unpacks."""
        widths = {g.name: g.max_length for g in self.series}
        if [s.name for s in series] != list(widths) or any(
            s.max_length != widths[s.name] for s in series
        ):
            raise ValueError("the series must be the model's, in its order and max_length")
        static = list(static or [])
        if len(static) != self.n_static:
            raise ValueError(f"the model takes {self.n_static} static inputs")
        inputs = static + [
            FeatureSpec(name=c, description="padded series layout (filled by the server)")
            for c in padded_columns(series)
        ]
        return Signature(inputs=inputs, series=series)

    # -- the ONNX graph ------------------------------------------------------------------
    def to_onnx(self) -> bytes:
        from onnx import TensorProto, helper  # noqa: PLC0415 (heavy: onnx, export only)

        f32 = TensorProto.FLOAT
        inputs, nodes, inits = [], [], []

        def const(name: str, array: Any, dtype: Any = np.float32) -> str:
            value = np.asarray(array, dtype=dtype)
            inits.append(
                helper.make_tensor(
                    name,
                    helper.np_dtype_to_tensor_dtype(value.dtype),
                    value.shape,
                    value.ravel().tolist(),
                )
            )
            return name

        const("axes2", [2], np.int64)
        const("axes0", [0], np.int64)
        const("hour_scale", 1.0 / (SECONDS_PER_HOUR * TIME_SCALE_HOURS))
        hiddens: list[str] = []
        for g in self.series:
            s = g.name
            inputs += [
                helper.make_tensor_value_info(f"{s}.values", f32, ["n", g.max_length]),
                helper.make_tensor_value_info(f"{s}.times", f32, ["n", g.max_length]),
                helper.make_tensor_value_info(f"{s}.lengths", TensorProto.INT32, ["n"]),
            ]
            const(f"{s}.centre", g.centre)
            const(f"{s}.scale", g.scale)
            const(f"{s}.W", g.W[None, :, :])
            const(f"{s}.R", g.R[None, :, :])
            const(f"{s}.B", g.B[None, :])
            nodes += [
                helper.make_node("Sub", [f"{s}.values", f"{s}.centre"], [f"{s}.c"]),
                helper.make_node("Div", [f"{s}.c", f"{s}.scale"], [f"{s}.v"]),
                helper.make_node("Mul", [f"{s}.times", "hour_scale"], [f"{s}.h"]),
                helper.make_node("Unsqueeze", [f"{s}.v", "axes2"], [f"{s}.v3"]),
                helper.make_node("Unsqueeze", [f"{s}.h", "axes2"], [f"{s}.h3"]),
                helper.make_node("Concat", [f"{s}.v3", f"{s}.h3"], [f"{s}.x"], axis=2),
                helper.make_node("Transpose", [f"{s}.x"], [f"{s}.xt"], perm=[1, 0, 2]),
                helper.make_node(
                    "GRU",
                    [f"{s}.xt", f"{s}.W", f"{s}.R", f"{s}.B", f"{s}.lengths"],
                    ["", f"{s}.yh"],
                    hidden_size=g.hidden,
                    linear_before_reset=int(self.linear_before_reset),
                ),
                helper.make_node("Squeeze", [f"{s}.yh", "axes0"], [f"{s}.last"]),
            ]
            hiddens.append(f"{s}.last")
        if self.n_static:
            inputs.append(helper.make_tensor_value_info(STATIC_INPUT, f32, ["n", self.n_static]))
            hiddens.append(STATIC_INPUT)
        const("head_w", self.head_w[:, None])
        const("head_b", [self.head_b])
        const("one", [1.0])
        nodes += [
            helper.make_node("Concat", hiddens, ["features"], axis=1),
            helper.make_node("MatMul", ["features", "head_w"], ["logit0"]),
            helper.make_node("Add", ["logit0", "head_b"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["p"]),
            helper.make_node("Sub", ["one", "p"], ["q"]),
            helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
        ]
        graph = helper.make_graph(
            nodes,
            "trajectory_gru",
            inputs,
            [helper.make_tensor_value_info("probabilities", f32, ["n", 2])],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
        model.ir_version = 8
        layout = {
            "series": [{"name": g.name, "max_length": g.max_length} for g in self.series],
            "static": self.n_static,
        }
        helper.set_model_props(
            model,
            {
                META_TRAJECTORY: json.dumps(layout),
                "medserve.class_labels": json.dumps(self.class_labels),
                "medserve.task": "classification",
            },
        )
        return bytes(model.SerializeToString())


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float64)

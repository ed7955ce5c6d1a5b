"""The demo CNN's architecture written as an ONNX graph from plain weight arrays.

Writing the graph directly (rather than ``torch.onnx.export``) keeps the exported model exactly
the architecture documented here, independent of torch's exporter versions; the training recipe
checks the ONNX output against torch's own forward pass before it writes the file.

Architecture: three 3x3 convolutions (8, 16, 16 channels, padding 1) with ReLU, 2x2 max pooling
after the first two, global max pooling (a lesion anywhere counts), then a linear layer and a
softmax: about 3,700 weights.
"""

from __future__ import annotations

from typing import Final

import numpy as np

CHANNELS: Final = (8, 16, 16)


def cnn_onnx(weights: dict[str, np.ndarray], size: tuple[int, int], n_classes: int) -> bytes:
    import onnx  # noqa: PLC0415 (heavy: onnx, kept off the serving path)

    # lazy import (heavy: onnx, kept off the serving path)
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    nodes = []
    inits = [
        numpy_helper.from_array(np.asarray(v, dtype=np.float32), name=k)
        for k, v in sorted(weights.items())
    ]
    current = "image"
    for i in range(len(CHANNELS)):
        nodes += [
            helper.make_node(
                "Conv",
                [current, f"conv{i}.weight", f"conv{i}.bias"],
                [f"c{i}"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
            ),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        current = f"r{i}"
        if i < len(CHANNELS) - 1:
            nodes.append(
                helper.make_node(
                    "MaxPool", [current], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]
                )
            )
            current = f"p{i}"
    nodes += [
        helper.make_node("GlobalMaxPool", [current], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "medserve_demo_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, *size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", n_classes])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="medserve"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())

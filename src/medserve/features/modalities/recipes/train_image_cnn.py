"""Train the demo CT/MR lesion CNN and write it as an image bundle (ONNX + preprocessing spec).

Training-time only: needs torch (CPU wheel), which the server never imports.

    pip install torch==2.13.0      # the CPU wheel
    python -m medserve.features.modalities.recipes.train_image_cnn [--out PATH]

Data: pydicom's bundled CT_small / MR_small / examples_overlay slices with synthetic lesions
(see ``medserve.features.modalities.image_demo_data``) --
synthetic, for demonstrating the serving path only.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

from medserve.features.modalities.bundle import write_bundle
from medserve.features.modalities.image_cnn import CHANNELS, cnn_onnx
from medserve.features.modalities.image_demo_data import LABELS, dataset
from medserve.features.modalities.image_preprocessing import ImagePreprocessing, Window

SPEC = ImagePreprocessing(
    size=(64, 64),
    window=Window(center=40, width=400),  # soft-tissue window, in HU
    window_modalities=["CT"],
    modalities=["CT", "MR"],
    class_labels=LABELS,
    positive_label="lesion",
    occlusion_patch=8,
)
DEFAULT_OUT = Path(
    str(resources.files("medserve.features.modalities") / "assets" / "demo_lesion_cnn.zip")
)


def train(seed: int = 0, n_train: int = 4000, epochs: int = 16) -> dict[str, np.ndarray]:
    import torch  # noqa: PLC0415 (heavy: torch, kept off the serving path)
    from torch import nn  # noqa: PLC0415 (heavy: torch, kept off the serving path)

    torch.manual_seed(seed)
    X, y = dataset(n_train, SPEC, seed=seed)

    class GlobalMaxPool(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.amax(x, dim=(2, 3))

    layers: list[nn.Module] = []
    in_ch = 1
    for i, out_ch in enumerate(CHANNELS):
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU()]
        if i < len(CHANNELS) - 1:
            layers.append(nn.MaxPool2d(2))
        in_ch = out_ch
    model = nn.Sequential(*layers, GlobalMaxPool(), nn.Linear(in_ch, len(LABELS)))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for epoch in range(epochs):
        order = torch.randperm(len(Xt))
        total = 0.0
        for start in range(0, len(Xt), 32):
            idx = order[start : start + 32]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}: loss {total / len(Xt):.4f}")
    model.eval()
    weights: dict[str, np.ndarray] = {}
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    for i, conv in enumerate(convs):
        weights[f"conv{i}.weight"] = conv.weight.detach().numpy()
        weights[f"conv{i}.bias"] = conv.bias.detach().numpy()
    fc = next(m for m in model if isinstance(m, nn.Linear))
    weights["fc.weight"] = fc.weight.detach().numpy()
    weights["fc.bias"] = fc.bias.detach().numpy()
    # check the hand-written ONNX graph against torch on held-out data
    X_test, y_test = dataset(1000, SPEC, seed=seed + 1)
    with torch.no_grad():
        torch_probs = torch.softmax(model(torch.from_numpy(X_test)), dim=1).numpy()
    onnx_bytes = cnn_onnx(weights, SPEC.size, len(LABELS))
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (onnx_probs,) = session.run(None, {"image": X_test})
    gap = float(np.abs(onnx_probs - torch_probs).max())
    accuracy = float((onnx_probs.argmax(1) == y_test).mean())
    print(f"ONNX vs torch max |diff| {gap:.2e}; held-out synthetic accuracy {accuracy:.3f}")
    if gap > 1e-4:
        raise SystemExit("the ONNX graph does not reproduce the torch model")
    weights["_accuracy"] = np.array(accuracy)
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    weights = train(args.seed)
    accuracy = float(weights.pop("_accuracy"))
    onnx_bytes = cnn_onnx(weights, SPEC.size, len(LABELS))
    spec = SPEC.model_dump(mode="json")
    card = {
        "data": "SYNTHETIC: pydicom's bundled CT_small/MR_small/examples_overlay slices with "
        "synthetic round lesions added; not clinical data; no clinical claim",
        "held_out_synthetic_accuracy": round(accuracy, 4),
        "recipe": "medserve.features.modalities.recipes.train_image_cnn",
    }
    members = {"model.onnx": onnx_bytes, "training.json": json.dumps(card, indent=1).encode()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_bundle("image", spec, members, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

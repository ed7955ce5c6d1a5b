"""Recipe: train a GRU on trajectories with PyTorch, export it as a ``trajectory`` ONNX model,
check the export against torch, and register it. SYNTHETIC data (medserve's ICU generator).

Needs torch, which medserve does not depend on (a range pulls a several-GB CUDA build): install
the CPU wheel exactly, e.g. ``pip install torch==2.13.0 --index-url
https://download.pytorch.org/whl/cpu``. Run from the repository root:

    .venv/bin/python examples/trajectory_gru_torch.py

The export copies torch's weights into :class:`GruModel`, whose ONNX graph uses ONNX's own GRU
op with ``sequence_lens`` (torch's gate order r, z, n becomes ONNX's z, r, h;
``linear_before_reset=1`` is torch's GRU), so no exporter (``torch.onnx``, ``onnxscript``) is
needed and the graph is the one medserve's tests check against the numpy reference.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medserve.core.registry.service import Registry
from medserve.core.series import SECONDS_PER_HOUR
from medserve.faces.demo.trajectory import demo_spec
from medserve.features.training.synthetic_icu import generate
from medserve.features.training.trajectories import sample_prediction_times
from medserve.features.training.trajectory_gru import TIME_SCALE_HOURS, GruModel, SeriesGru

SERIES = ["heart_rate", "lactate"]
HIDDEN = 8


class TorchGru(nn.Module):
    def __init__(self, centres: list[float], scales: list[float]) -> None:
        super().__init__()
        self.centres, self.scales = centres, scales
        self.grus = nn.ModuleList(nn.GRU(2, HIDDEN, batch_first=True) for _ in SERIES)
        self.head = nn.Linear(HIDDEN * len(SERIES), 1)

    def forward(
        self, values: list[torch.Tensor], times: list[torch.Tensor], lengths: list[torch.Tensor]
    ) -> torch.Tensor:
        hidden = []
        for k, gru in enumerate(self.grus):
            x = torch.stack(
                [
                    (values[k] - self.centres[k]) / self.scales[k],
                    times[k] / SECONDS_PER_HOUR / TIME_SCALE_HOURS,
                ],
                dim=2,
            )
            packed = nn.utils.rnn.pack_padded_sequence(
                x, lengths[k].clamp(min=1), batch_first=True, enforce_sorted=False
            )
            _, h = gru(packed)
            hidden.append(torch.where((lengths[k] > 0)[:, None], h[0], torch.zeros_like(h[0])))
        return torch.sigmoid(self.head(torch.cat(hidden, dim=1)))[:, 0]


def _onnx_order(weight: torch.Tensor) -> np.ndarray:
    r, z, n = weight.detach().double().numpy().reshape(3, HIDDEN, -1)
    return np.concatenate([z, r, n]).reshape(3 * HIDDEN, -1).squeeze()


def export(model: TorchGru, widths: dict[str, int]) -> GruModel:
    grus = []
    for k, name in enumerate(SERIES):
        g = model.grus[k]
        grus.append(
            SeriesGru(
                name,
                widths[name],
                _onnx_order(g.weight_ih_l0),
                _onnx_order(g.weight_hh_l0),
                np.concatenate([_onnx_order(g.bias_ih_l0), _onnx_order(g.bias_hh_l0)]),
                model.centres[k],
                model.scales[k],
            )
        )
    head_w = model.head.weight.detach().double().numpy()[0]
    return GruModel(grus, head_w, float(model.head.bias.item()), 0, linear_before_reset=True)


def main() -> None:
    spec = demo_spec(stays=240)
    stays, measurements = generate(spec.synthetic_stays, spec.seed)
    samples = sample_prediction_times(spec, stays, measurements)
    y = torch.tensor(samples.frame[spec.label].to_numpy(), dtype=torch.float32)
    batch = {name: samples.batch[name] for name in SERIES}
    tensors = [
        [torch.tensor(np.where(p.mask, x, 0.0), dtype=torch.float32) for x in (p.values, p.times)]
        + [torch.tensor(p.lengths)]
        for p in batch.values()
    ]
    values, times, lengths = ([t[i] for t in tensors] for i in range(3))
    centres = [float(np.nanmean(np.where(p.mask, p.values, np.nan))) for p in batch.values()]
    scales = [float(np.nanstd(np.where(p.mask, p.values, np.nan))) or 1.0 for p in batch.values()]
    torch.manual_seed(0)
    model = TorchGru(centres, scales)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(60):
        optimiser.zero_grad()
        loss = nn.functional.binary_cross_entropy(model(values, times, lengths), y)
        loss.backward()
        optimiser.step()
        if epoch % 20 == 0:
            print(f"epoch {epoch}: loss {loss.item():.4f}")
    exported = export(model, {s.name: s.max_length for s in spec.series})
    with torch.no_grad():
        p_torch = model(values, times, lengths).double().numpy()
    p_numpy = exported.predict(np.empty((len(y), 0)), batch)[:, 1]
    print(f"largest |torch - export| = {np.abs(p_torch - p_numpy).max():.2e}")
    assert np.abs(p_torch - p_numpy).max() < 1e-5
    series = [s.spec() for s in spec.series if s.name in SERIES]
    path = "gru-ews.onnx"
    with open(path, "wb") as handle:
        handle.write(exported.to_onnx())
    registry = Registry.open()
    try:
        version = registry.register("gru-ews", path, signature=exported.signature(series))
    finally:
        registry.close()
    print(f"registered gru-ews v{version.version} as flavor {version.flavor!r}")


if __name__ == "__main__":
    main()

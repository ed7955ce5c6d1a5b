"""The HTML report is self-contained and contains each plot of the task."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from medserve.core.evaluation.evaluate import Predictions, evaluate
from medserve.core.evaluation.report import PLOT_IDS, render_report


def _predictions(task: str) -> Predictions:
    rng = np.random.default_rng(4)
    n = 300
    if task == "binary":
        p = rng.uniform(0.05, 0.95, n)
        return Predictions("binary", (rng.uniform(size=n) < p).astype(float), p, positive_label="y")
    if task == "regression":
        y = rng.normal(50, 10, n)
        return Predictions("regression", y, y + rng.normal(0, 5, n))
    t = rng.exponential(20, n)
    risk = -t + rng.normal(0, 10, n)
    return Predictions(
        "survival",
        t,
        risk,
        event=(rng.uniform(size=n) < 0.7).astype(int),
        survival_at={10.0: rng.uniform(0.3, 0.9, n), 20.0: rng.uniform(0.2, 0.8, n)},
    )


@pytest.mark.parametrize("task", ["binary", "regression", "survival"])
def test_report_contains_each_plot_as_an_inline_png(task: str) -> None:
    pred = _predictions(task)
    groups = np.where(np.arange(300) < 280, "main", "rare")
    result = evaluate(pred, subgroups={"site": groups}, n_boot=20, min_n=50)
    page = render_report(result, title=f"{task} <report>")
    assert "&lt;report&gt;" in page  # titles are escaped
    assert "<script" not in page
    assert "http://" not in page
    assert "https://" not in page
    for plot in PLOT_IDS[task]:
        marker = f"id='plot-{plot}' alt='{plot}' src='data:image/png;base64,"
        assert marker in page, plot
        data = page.split(marker, 1)[1].split("'", 1)[0]
        assert base64.b64decode(data).startswith(b"\x89PNG")
    assert "n=20 is below the minimum of 50" in page

"""A model trained *outside* medserve, as any hospital's training code would write one.

Writes, into the folder given (default ``sepsis-files``):

- ``model.skops``: a scikit-learn pipeline (scaler + logistic regression) saved with skops;
- ``train.csv``: the rows it was trained on (site A), with ``patient_id`` and the label;
- ``test.csv``: a held-out set from another site (site B), with ``patient_id``, ``sex``
  (an evaluation-only subgroup column) and the label;
- ``patients.csv``: three unlabelled rows to predict.

The cohort is SYNTHETIC (random numbers with a planted relationship): no real patient, no
clinical claim. The README's tour registers this model, evaluates it on ``test.csv`` with the
test set's provenance declared, and promotes it to production through the gate.

    python examples/external/train_elsewhere.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import skops.io
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = ["age", "heart_rate", "resp_rate", "temperature", "lactate", "wbc"]


def cohort(rng: np.random.Generator, n: int, site: str, first_id: int) -> pd.DataFrame:
    """``n`` synthetic encounters of one site; the label follows a known logistic rule."""
    frame = pd.DataFrame(
        {
            "patient_id": [f"{site}-{first_id + i:06d}" for i in range(n)],
            "age": rng.normal(64, 15, n).clip(18, 99).round(),
            "heart_rate": rng.normal(92, 18, n).clip(40, 180).round(),
            "resp_rate": rng.normal(19, 5, n).clip(8, 45).round(),
            "temperature": rng.normal(37.4, 0.9, n).clip(34.5, 41.5).round(1),
            "lactate": rng.lognormal(0.4, 0.55, n).clip(0.3, 15).round(1),
            "wbc": rng.lognormal(2.25, 0.4, n).clip(1, 45).round(1),
            "sex": rng.choice(["female", "male"], n),
        }
    )
    logit = (
        -13.0
        + 0.02 * frame["age"]
        + 0.04 * frame["heart_rate"]
        + 0.15 * frame["resp_rate"]
        + 1.0 * (frame["temperature"] - 37)
        + 1.1 * frame["lactate"]
        + 0.08 * frame["wbc"]
    )
    frame["sepsis"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


def main(out: Path) -> None:
    rng = np.random.default_rng(2025)
    train = cohort(rng, 2000, "A", 1)
    test = cohort(rng, 800, "B", 1)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(train[FEATURES], train["sepsis"])
    out.mkdir(parents=True, exist_ok=True)
    skops.io.dump(model, out / "model.skops")
    train.drop(columns=["sex"]).to_csv(out / "train.csv", index=False)
    test.to_csv(out / "test.csv", index=False)
    test[FEATURES].head(3).to_csv(out / "patients.csv", index=False)
    print(
        f"wrote {out}/model.skops, train.csv ({len(train)} rows, site A), "
        f"test.csv ({len(test)} rows, site B), patients.csv (3 rows)"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "sepsis-files"))

"""The two benchmark models, trained identically in whichever venv runs this module.

It needs only scikit-learn (plus the saver's own package), because peers' pickles (joblib for
MLServer, MLflow's model directory) are only safe to load with the scikit-learn that wrote them:
each peer venv runs ``python -m benchmarks.training --format ... --out ...`` itself, and the fixed
seed makes every copy the same model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SEED = 0
LR = "breast-cancer-lr"
RF = "breast-cancer-rf"
MODEL_NAMES = (LR, RF)


def load_data() -> tuple[Any, Any]:
    """Features as a DataFrame (names like "mean radius" kept), so every copy knows its columns."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    return data.data, data.target


def train_models(feature_names: bool = True) -> dict[str, Any]:
    """Fit both models; ``feature_names=False`` fits on the bare array.

    The fit is numerically the same either way; the flag only decides whether the estimator
    records ``feature_names_in_``. Servers fed plain tensors (MLServer) get array-fitted models,
    or scikit-learn warns "X does not have valid feature names" on every request, and MLServer's
    workers print that warning each time, which would make it look slower than it is.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_data()
    if not feature_names:
        x = x.to_numpy()
    lr = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])
    rf = RandomForestClassifier(n_estimators=100, random_state=SEED)
    return {LR: lr.fit(x, y), RF: rf.fit(x, y)}


def save_joblib(models: dict[str, Any], out: Path) -> None:
    """MLServer layout: one folder per model with model.joblib and model-settings.json."""
    import joblib

    for name, model in models.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(model, folder / "model.joblib")
        settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib"},
        }
        (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))


def save_mlflow(models: dict[str, Any], out: Path) -> None:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    x, _ = load_data()
    for name, model in models.items():
        signature = infer_signature(x, model.predict(x))
        # MLflow 3 saves with skops by default and asks for tree internals to be trusted.
        trusted = ["sklearn.tree._tree.Tree"]
        mlflow.sklearn.save_model(
            model, str(out / name), signature=signature, skops_trusted_types=trusted
        )


def save_skops(models: dict[str, Any], out: Path) -> None:
    """medserve layout: NAME.skops plus a sample CSV carrying the feature columns."""
    import skops.io

    x, _ = load_data()
    out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        skops.io.dump(model, out / f"{name}.skops")
    x.head(50).to_csv(out / "sample.csv", index=False)


SAVERS = {"joblib": save_joblib, "mlflow": save_mlflow, "skops": save_skops}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--format", choices=sorted(SAVERS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    SAVERS[args.format](train_models(feature_names=args.format != "joblib"), args.out)


if __name__ == "__main__":
    main()

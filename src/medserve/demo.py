"""``medserve demo``: real models on data that ships with scikit-learn, registered and served.

The data are scikit-learn's bundled Wisconsin breast-cancer (diagnosis, binary) and diabetes
(disease progression after one year, regression) sets. They are small public research data sets,
not a clinical validation: the point is the real registration and serving path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from medserve.errors import AliasNotFoundError, ModelNotFoundError
from medserve.registry.entities import ModelVersion
from medserve.registry.service import Registry
from medserve.registry.signature import infer_signature
from medserve.settings import Settings

SEED = 20240601


@dataclass(frozen=True)
class DemoModel:
    name: str
    description: str
    frame: pd.DataFrame  # features only
    target: pd.Series
    estimator: Any


def breast_cancer_frame() -> tuple[pd.DataFrame, pd.Series]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    names = np.asarray(data.target_names)  # 0 = malignant, 1 = benign
    return data.data, pd.Series(names[data.target], name="diagnosis")


def demo_models() -> list[DemoModel]:
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X_bc, y_bc = breast_cancer_frame()
    diabetes = load_diabetes(as_frame=True)
    return [
        DemoModel(
            "breast-cancer",
            "Wisconsin breast-cancer diagnosis (malignant/benign) from FNA image features: "
            "scaled logistic regression. Demo data, not clinically validated.",
            X_bc,
            y_bc,
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=SEED)),
        ),
        DemoModel(
            "breast-cancer-rf",
            "Wisconsin breast-cancer diagnosis: 100-tree random forest. Demo data.",
            X_bc,
            y_bc,
            RandomForestClassifier(n_estimators=100, random_state=SEED),
        ),
        DemoModel(
            "diabetes-progression",
            "Diabetes disease progression one year after baseline (regression), "
            "from scikit-learn's bundled diabetes data (features mean-centred and scaled).",
            diabetes.data,
            diabetes.target,
            GradientBoostingRegressor(random_state=SEED),
        ),
    ]


def register_demo_models(registry: Registry, console: Console | None = None) -> list[ModelVersion]:
    """Train and register each demo model unless it already has a production version."""
    versions = []
    for demo in demo_models():
        try:
            number = registry.store.get_alias(demo.name, "production")
            versions.append(registry.store.get_version(demo.name, number))
            if console:
                console.print(f"[dim]{demo.name}: production is v{number} already[/]")
            continue
        except (ModelNotFoundError, AliasNotFoundError):
            pass
        demo.estimator.fit(demo.frame, demo.target)
        signature = infer_signature(demo.frame, range_margin=0.5)
        version = registry.register(
            demo.name,
            demo.estimator,
            sample=demo.frame,
            signature=signature,
            alias="production",
            description=demo.description,
            tags={"demo": "true", "dataset": "scikit-learn bundled"},
            created_by="medserve-demo",
        )
        versions.append(version)
        if console:
            console.print(
                f"registered [bold]{demo.name}[/] v{version.version} → production "
                f"([cyan]{version.runtime}[/]: {version.runtime_reason})"
            )
    return versions


def write_examples(home: Path) -> dict[str, Path]:
    """One request body per demo model, so printed curl commands stay short and work."""
    folder = home / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for demo in demo_models():
        row = {k: float(v) for k, v in demo.frame.iloc[0].items()}
        path = folder / f"{demo.name}.records.json"
        path.write_text(json.dumps({"instances": [row]}, indent=1))
        written[f"{demo.name}:records"] = path
        v2 = {
            "id": "demo-1",
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, len(row)],
                    "datatype": "FP32",
                    "data": list(row.values()),
                }
            ],
        }
        v2_path = folder / f"{demo.name}.v2.json"
        v2_path.write_text(json.dumps(v2))
        written[f"{demo.name}:v2"] = v2_path
    return written


def run_demo(console: Console, *, serve: bool, port: int = 8000) -> None:
    settings = Settings()
    if serve:
        settings = settings.model_copy(update={"port": port})
    registry = Registry.open(settings)
    try:
        with console.status("training and registering the demo models..."):
            register_demo_models(registry, console)
        examples = write_examples(settings.home)
    finally:
        registry.close()
    console.rule("demo models")
    console.print("List them: [bold].venv/bin/medserve models list[/]")
    base = f"http://{settings.host}:{settings.port}"
    console.rule("call them")
    for name in ("breast-cancer", "breast-cancer-rf", "diabetes-progression"):
        records, v2 = examples[f"{name}:records"], examples[f"{name}:v2"]
        console.print(
            f"curl -s -X POST {base}/v1/models/{name}/predict "
            f"-H 'Content-Type: application/json' -d @{records}",
            highlight=False,
            soft_wrap=True,
        )
        console.print(
            f"curl -s -X POST {base}/v2/models/{name}/infer "
            f"-H 'Content-Type: application/json' -d @{v2}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        "Python: from medserve.client import Client; "
        f"Client('{base}').predict('breast-cancer', [{{...one record...}}])",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"OpenAPI docs: {base}/docs   metrics: {base}/metrics")
    if not serve:
        return
    console.rule(f"serving on {base} (Ctrl-C to stop)")
    console.print(
        "[bold yellow]demo mode: the server runs WITHOUT authentication, on loopback only.[/]"
    )
    from medserve.serving.server import run_server

    run_server(settings)

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

import pandas as pd
from rich.console import Console

from medserve.core.errors import AliasNotFoundError, ModelNotFoundError
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry
from medserve.core.registry.signature import infer_signature
from medserve.core.settings import Settings
from medserve.faces.demo.data import breast_cancer_frame

SEED = 20240601


@dataclass(frozen=True)
class DemoModel:
    name: str
    description: str
    frame: pd.DataFrame  # features only
    target: pd.Series
    estimator: Any


def demo_models() -> list[DemoModel]:
    # lazy import (heavy: scikit-learn, kept off the serving path)
    from sklearn.datasets import load_diabetes  # noqa: PLC0415

    # lazy import (heavy: scikit-learn, kept off the serving path)
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier  # noqa: PLC0415

    # lazy import (heavy: scikit-learn, kept off the serving path)
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    # lazy import (heavy: scikit-learn, kept off the serving path)
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415

    # lazy import (heavy: scikit-learn, kept off the serving path)
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

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


def _demo_card(name: str, what: str, population: str, extra_caveat: str) -> dict[str, Any]:
    """Author statements for a demo card: honest about being a demonstration."""
    return {
        "developer": "medserve demo (medserve maintainers); contact: the medserve issue tracker",
        "funding": "none: open-source demonstration",
        "output_description": what,
        "intended_use": "Demonstrating medserve's registration, evaluation, gating and serving. "
        "NOT for clinical decisions.",
        "intended_population": population,
        "intended_users": "engineers and data scientists evaluating medserve",
        "decision_role": "none (demonstration); a clinical model of this kind would inform, "
        "not replace, clinical judgement",
        "cautioned_uses": "Any clinical use; any population other than the source study; "
        "any decision about a real patient.",
        "known_risks": "Small single-source research data set; no external or local "
        "validation; subgroup results partly synthetic (see caveats).",
        "training_criteria": "All rows of the public scikit-learn data set; no exclusions.",
        "demographic_representativeness": "Unknown: the public data set does not describe its "
        "population beyond the variables it contains.",
        "deployment_relevance": "None: a demonstration, not a deployment.",
        "fairness_approach": "Per-subgroup metrics with bootstrap CIs and a minimum n; "
        "acceptance criteria on every reportable subgroup.",
        "bias_management": "Subgroup performance is checked by the promotion gate; "
        "no reweighting was applied.",
        "external_validation": {
            "source": "none performed",
            "party": "none",
            "representativeness": "not applicable (no external data)",
            "process": "none performed; a clinical model would need one before use",
            "validity": "no external validation performed",
            "fairness": "no external validation performed",
        },
        "outcome_references": "none: no study of the model's effect on outcomes",
        "monitoring": {
            "validity_process": "medserve live performance monitoring once outcomes are "
            "recorded (monthly review)",
            "fairness_process": "per-subgroup live metrics reviewed monthly",
            "local_validity": "no local evaluation yet",
            "local_fairness": "no local evaluation yet",
        },
        "update": {
            "process": "retrain through `medserve train`, re-evaluate, pass the promotion gate",
            "frequency": "on demand (demonstration)",
        },
        "ethical_considerations": "Public de-identified research data; no patient can be "
        "re-identified from the model. Not validated for care.",
        "caveats": extra_caveat,
    }


def _demo_spec(demo: DemoModel) -> tuple[dict[str, Any], pd.DataFrame]:
    """The training spec (and frame) each demo model goes through."""
    common: dict[str, Any] = {
        "name": demo.name,
        "description": demo.description,
        "cv_folds": 3,
        "seed": SEED,
        "final_fit": "all",
        # a lower bar than the defaults (min_n 30, min_events 10), said here: the demo's
        # synthetic subgroups of 569 rows hold 9 positives in the test split at the smallest
        "evaluation": {"bootstrap": 200, "min_n": 20, "min_events": 5},
    }
    if demo.name.startswith("breast-cancer"):
        frame = demo.frame.copy()
        frame["diagnosis"] = demo.target.to_numpy()
        spec = {
            **common,
            "data": "sklearn:breast_cancer",
            "task": "binary",
            "target": "diagnosis",
            "positive_label": "malignant",
            "synthetic_subgroups": ["sex", "age_band"],
            "acceptance": [
                {"metric": "auroc", "statistic": "ci_low", "min": 0.9},
                {"metric": "brier", "max": 0.08},
                {"metric": "oe_ratio", "min": 0.8, "max": 1.25},
                {"metric": "auroc", "scope": "each_subgroup", "min": 0.85},
            ],
            "card": _demo_card(
                demo.name,
                "probability that a breast mass is malignant, and a malignant/benign label",
                "women with a breast mass sampled by fine-needle aspiration (Wisconsin study)",
                "The sex and age-band subgroups are synthetic: the data set has neither.",
            ),
        }
        return spec, frame
    from medserve.core.datasets import builtin  # noqa: PLC0415 (pulls pandas)

    frame = builtin("sklearn:diabetes")
    spec = {
        **common,
        "data": "sklearn:diabetes",
        "task": "regression",
        "target": "progression",
        "algorithms": ["hist_gradient_boosting"],  # listed for the record; the estimator is given
        "subgroups": ["sex_code"],
        "age_bands": {"column": "age_years", "edges": [40, 60]},
        "features": {"drop": ["age_years"]},
        "acceptance": [
            {"metric": "r2", "min": 0.2},
            {"metric": "mae", "scope": "each_subgroup", "max": 70},
        ],
        "card": _demo_card(
            demo.name,
            "predicted disease-progression score one year after baseline",
            "adults with diabetes in the source study (442 patients)",
            "Sex is evaluated by the data set's codes 1/2 (it does not say which is which); "
            "age bands come from the unscaled ages.",
        ),
    }
    return spec, frame


def register_demo_models(registry: Registry, console: Console | None = None) -> list[ModelVersion]:
    """Train each demo model through the training pipeline (evaluation, card) and promote it
    through the gate, unless it already has a production version."""
    # lazy import (pulls the evaluation report (matplotlib))
    from medserve.features.governance.gate import set_alias_gated  # noqa: PLC0415
    from medserve.features.training.pipeline import train  # noqa: PLC0415 (pulls scikit-learn)
    from medserve.features.training.spec import parse_spec  # noqa: PLC0415 (pulls scikit-learn)

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
        raw, frame = _demo_spec(demo)
        result = train(
            parse_spec(raw),
            registry,
            frame=frame,
            estimator=demo.estimator,
            signature=infer_signature(demo.frame, range_margin=0.5),
            created_by="medserve-demo",
            tags={"demo": "true", "dataset": "scikit-learn bundled"},
        )
        version = result.version
        set_alias_gated(registry, demo.name, "production", version.version, actor="medserve-demo")
        versions.append(version)
        if console:
            console.print(
                f"registered [bold]{demo.name}[/] v{version.version} → production through the "
                f"gate ([cyan]{version.runtime}[/]: {version.runtime_reason})"
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


def run_demo(console: Console, *, serve: bool, port: int = 8000, drift: bool = False) -> None:
    # lazy import (the demo trains models (scikit-learn))
    from medserve.faces.demo.composition import ENSEMBLE_MODEL, register_demo_ensemble  # noqa: PLC0415

    # lazy import (the demo's foundation models: GGUF metadata, the MiniLM ONNX graph)
    from medserve.faces.demo.llm import register_llm_demos  # noqa: PLC0415

    # lazy import (the demo trains models (scikit-learn))
    from medserve.faces.demo.modalities import register_modality_demos  # noqa: PLC0415

    settings = Settings().model_copy(update={"port": port})
    base = f"http://{settings.host}:{settings.port}"
    registry = Registry.open(settings)
    try:
        with console.status("training and registering the demo models..."):
            register_demo_models(registry, console)
            ensemble = register_demo_ensemble(registry)
        console.print(
            f"registered [bold]{ENSEMBLE_MODEL}[/] v{ensemble.version} → production "
            f"([cyan]{ensemble.runtime}[/]: {ensemble.runtime_reason})"
        )
        examples = write_examples(settings.home)
        # same inputs as breast-cancer (its members share that signature)
        examples[f"{ENSEMBLE_MODEL}:records"] = examples["breast-cancer:records"]
        examples[f"{ENSEMBLE_MODEL}:v2"] = examples["breast-cancer:v2"]
        with console.status("registering the image, text and sequence demo models..."):
            modalities = register_modality_demos(registry, settings.home, base)
        with console.status("registering (and evaluating) the chat and embedding demo models..."):
            llm = register_llm_demos(registry, settings.home, base)
        extra_commands = [
            *modalities.commands,
            *_interop_demo(registry, settings, base),
            *_trajectory_demo(registry, settings, base),
            *llm.commands,
        ]
    finally:
        registry.close()
    console.rule("demo models")
    console.print("List them: [bold].venv/bin/medserve models list[/]")
    for skipped in [*modalities.skipped, *llm.skipped]:
        console.print(f"[yellow]skipped[/] {skipped}")
    console.rule("call them")
    for name in ("breast-cancer", "breast-cancer-rf", "diabetes-progression", ENSEMBLE_MODEL):
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
    for command in extra_commands:
        console.print(command, highlight=False, soft_wrap=True)
    console.print(
        "Python: from medserve.faces.client import Client; "
        f"Client('{base}').predict('breast-cancer', [{{...one record...}}])",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"OpenAPI docs: {base}/docs   metrics: {base}/metrics")
    console.print(
        f"Web console: {base}/ui/  (models, cards, evaluations, the promotion gate, "
        "monitoring and drift, the audit trail)",
        highlight=False,
        soft_wrap=True,
    )
    if settings.grpc_port is not None:  # medserve demo --grpc-port N (make demo: 8081)
        console.print(
            f"gRPC (Open Inference Protocol v2, inference.GRPCInferenceService): "
            f"{settings.host}:{settings.grpc_port}, e.g. tritonclient.grpc.InferenceServerClient"
            f"('{settings.host}:{settings.grpc_port}') (docs/grpc.md)",
            highlight=False,
            soft_wrap=True,
        )
    if drift:
        _drift_scenario(console, settings)
    if not serve:
        return
    console.rule(f"serving on {base} (Ctrl-C to stop)")
    console.print(
        "[bold yellow]demo mode: the server runs WITHOUT authentication, on loopback only.[/]"
    )
    # lazy import (the CLI imports the web app only to serve)
    from medserve.faces.app import APP_FACTORY  # noqa: PLC0415

    # lazy import (the CLI imports uvicorn only to serve)
    from medserve.serving.server import run_server  # noqa: PLC0415

    run_server(settings, APP_FACTORY)


def _interop_demo(registry: Registry, settings: Settings, base: str) -> list[str]:
    """FHIR and CDS Hooks calls on a demo model, when the interop package is installed."""
    try:
        # lazy import (the demo trains models (scikit-learn))
        from medserve.faces.demo.interop import register_interop_demo  # noqa: PLC0415
    except ImportError:  # pragma: no cover - the interop package ships with medserve
        return []
    return list(register_interop_demo(registry, settings.home, base))


def _trajectory_demo(registry: Registry, settings: Settings, base: str) -> list[str]:
    """The ICU deterioration model taking a trajectory (synthetic data; docs/trajectories.md)."""
    # lazy import (the demo trains a model (scikit-learn, pandas))
    from medserve.faces.demo.trajectory import register_trajectory_demo  # noqa: PLC0415

    return register_trajectory_demo(registry, settings.home, base)


def _drift_scenario(console: Console, settings: Settings) -> None:
    """``medserve demo --drift``: a real server, a stable then a shifted stream, the alert."""
    # lazy import (the demo trains models (scikit-learn))
    from medserve.faces.demo.drift import run_drift_demo  # noqa: PLC0415

    # lazy import (the CLI imports uvicorn only to serve)
    from medserve.serving.server import start_background_server  # noqa: PLC0415

    console.rule("drift scenario: breast-cancer receives a shifted stream")
    with start_background_server(settings) as url:
        registry = Registry.open(settings)
        try:
            run_drift_demo(
                registry, console, url=url, report_path=settings.home / "drift-report.html"
            )
        finally:
            registry.close()

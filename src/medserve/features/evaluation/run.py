"""Evaluating a registered version on a labelled file, through the same runtime that serves it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medserve.core.datasets import fingerprint
from medserve.core.errors import InvalidRequestError
from medserve.core.evaluation.evaluate import Predictions, evaluate
from medserve.core.evaluation.report import render_report
from medserve.core.loaded_model import load_version_locally
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry
from medserve.core.store.governance import GovernanceStore


def evaluate_version(
    registry: Registry,
    version: ModelVersion,
    frame: pd.DataFrame,
    *,
    label: str,
    dataset_name: str,
    subgroups: list[str] | None = None,
    kind: str = "local",
    positive_label: str | None = None,
    threshold: float | None = None,
    min_n: int = 30,
    n_boot: int = 500,
    seed: int = 0,
    actor: str = "unknown",
) -> tuple[dict[str, Any], str | None]:
    """Evaluate, store against (version, data fingerprint), store the HTML report; returns
    (result, report sha256)."""

    missing = [c for c in [label, *(subgroups or [])] if c not in frame]
    if missing:
        raise InvalidRequestError(f"columns not in the data: {', '.join(missing)}")
    gov = GovernanceStore(registry.store)
    record = gov.training_run(version.model_name, version.version) or {}
    model = load_version_locally(registry, version)
    frame = frame.dropna(subset=[label]).reset_index(drop=True)
    rows = frame[model.signature.feature_names].to_dict(orient="records")
    outputs = model.predict(model.validator.records_to_matrix(rows))
    method = "fixed at 0.5"
    if model.is_classifier and model.class_keys is not None:
        keys = [str(k) for k in model.class_keys]
        proba = np.asarray(outputs["probabilities"], dtype=float)
        truth = frame[label].astype(str).to_numpy()
        if len(keys) == 2:
            positive = positive_label or record.get("outcome", {}).get("positive_label") or keys[1]
            if positive not in keys:
                raise InvalidRequestError(f"positive label must be one of {keys}")
            if threshold is None:
                threshold = float(record.get("threshold", {}).get("value", 0.5))
                method = f"from training: {record.get('threshold', {}).get('method', 'default')}"
            else:
                method = f"fixed at {threshold:g} on the command line"
            pred = Predictions(
                "binary",
                (truth == positive).astype(float),
                proba[:, keys.index(positive)],
                positive_label=positive,
            )
        else:
            unknown = sorted(set(truth) - set(keys))
            if unknown:
                raise InvalidRequestError(f"labels not among the model's classes: {unknown[:5]}")
            y = np.array([keys.index(v) for v in truth])
            pred = Predictions("multiclass", y, proba, class_names=keys)
    else:
        value = np.asarray(outputs["value"], dtype=float).reshape(len(frame), -1)[:, 0]
        pred = Predictions("regression", frame[label].to_numpy(dtype=float), value)
    result = evaluate(
        pred,
        threshold=0.5 if threshold is None else threshold,
        threshold_method=method,
        subgroups={c: frame[c].astype(str).to_numpy() for c in subgroups or []},
        min_n=min_n,
        n_boot=n_boot,
        seed=seed,
    )
    sha = fingerprint(frame)
    result["dataset"] = {"kind": kind, "sha256": sha, "rows": len(frame), "name": dataset_name}
    report = render_report(
        result,
        title=f"{version.model_name} v{version.version}: {kind} evaluation",
        context={"data": dataset_name, "data sha256": sha},
    )
    report_sha = registry.artifacts.put_bytes(report.encode())
    gov.save_evaluation(
        version.model_name,
        version.version,
        dataset_sha256=sha,
        dataset_name=dataset_name,
        kind=kind,
        result=result,
        report_sha256=report_sha,
        created_by=actor,
    )
    return result, report_sha

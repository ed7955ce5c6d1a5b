"""Explanations for served versions: method choice, caching, JSON and plain-words output.

ONNX-served scikit-learn models keep their original estimator as the version's source artifact
(skops): tree and linear explanations load it once per version and keep it; anything else is
explained model-agnostically on the served runtime itself.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
import weakref
from typing import Any

import numpy as np

from medserve.core import metrics
from medserve.core.artifacts import ArtifactStore
from medserve.core.errors import ComputationFailedError, InvalidRequestError, MedserveError
from medserve.core.loaded_model import LoadedModel
from medserve.core.registry.events import ReferenceProfiled, RegistryEvent
from medserve.core.store.base import RegistryStore
from medserve.core.store.monitoring import MonitoringStore
from medserve.features.explain.explainers import (
    Explainer,
    Explanation,
    LinearExplainer,
    PermutationExplainer,
    TreeShapExplainer,
    is_tree_model,
    linear_parts,
    quantile_background,
)

TOP_N = 3
SKLEARN_SOURCES = ("sklearn", "mlflow-sklearn")

log = logging.getLogger(__name__)


def shap_available() -> bool:
    return importlib.util.find_spec("shap") is not None


def source_estimator(artifacts: ArtifactStore, loaded: LoadedModel) -> Any | None:
    """The original scikit-learn estimator of a version, when one was registered (skops)."""
    # lazy import (pulls scikit-learn and skops)
    from medserve.core.runtimes.skops_runtime import load_skops_estimator  # noqa: PLC0415

    version = loaded.version
    if version.flavor == "skops":
        sha: str | None = version.artifact_sha256
    elif version.source_flavor in SKLEARN_SOURCES:
        sha = version.source_artifact_sha256
    else:
        sha = None
    if sha is None:
        return None
    return load_skops_estimator(artifacts.path(sha))


def default_target(loaded: LoadedModel, configured: str | None) -> str | None:
    keys = loaded.class_keys
    if not keys:
        return None
    if configured is not None and configured in keys:
        return configured
    return keys[1] if len(keys) >= 2 else keys[0]


def build_explainer(
    loaded: LoadedModel,
    estimator: Any | None,
    reference: dict[str, Any],
    target: str | None,
) -> Explainer:
    if (
        estimator is not None
        and linear_parts(estimator) is not None
        and loaded.signature.all_numeric
    ):
        mean = np.array(
            [
                reference.get("features", {}).get(name, {}).get("mean", 0.0)
                for name in loaded.signature.feature_names
            ],
            dtype=np.float64,
        )
        return LinearExplainer(estimator, mean, target)
    if estimator is not None and is_tree_model(estimator) and shap_available():
        return TreeShapExplainer(estimator, target)
    background = quantile_background(reference, loaded.signature.feature_names)
    keys = loaded.class_keys
    if keys:
        index = keys.index(target) if target in keys else len(keys) - 1

        def predict(X: np.ndarray) -> np.ndarray:
            return np.asarray(loaded.predict(X)["probabilities"], dtype=np.float64)[:, index]

        return PermutationExplainer(predict, background, output="probability", target=keys[index])

    def predict_value(X: np.ndarray) -> np.ndarray:
        return np.asarray(loaded.predict(X)["value"], dtype=np.float64).reshape(-1)

    return PermutationExplainer(predict_value, background, output="value", target=None)


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return str(value)


def plain_words(
    explanation: Explanation, row: int, names: list[str], values: list[Any], units: list[str | None]
) -> list[str]:
    effects = explanation.points if explanation.points is not None else explanation.attributions
    order = np.argsort(-np.abs(effects[row]))[:TOP_N]
    # A linear model's points split the change from the mean patient among the features (on
    # the probability scale, where effects do not add): a share, not what this value alone does.
    share = ""
    if explanation.points is not None:
        total = float(effects[row].sum()) * 100
        share = (
            f" (its share of the {total:+.1f}-point change from the mean patient, "
            "not the effect of this value alone)"
        )
    sentences = []
    for j in order:
        effect = float(effects[row, j])
        if effect == 0:
            continue
        verb = "raised" if effect > 0 else "lowered"
        unit = f" {units[j]}" if units[j] else ""
        what = f"{names[j]} {_fmt(values[j])}{unit}"
        if explanation.target is not None and explanation.output in ("probability", "log_odds"):
            sentences.append(
                f"{what} {verb} the probability of {explanation.target} "
                f"by {abs(effect) * 100:.1f} points{share}"
            )
        else:
            sentences.append(f"{what} {verb} the predicted value by {abs(effect):.4g}")
    return sentences


def to_json(explanation: Explanation, loaded: LoadedModel, X: np.ndarray) -> dict[str, Any]:
    names = loaded.signature.feature_names
    units = [f.unit for f in loaded.signature.inputs]
    rows = []
    for i in range(len(X)):
        values = [v.item() if isinstance(v, np.generic) else v for v in X[i]]
        entry: dict[str, Any] = {
            "base_value": float(explanation.base[i]),
            "prediction": float(explanation.prediction[i]),
            "attributions": {
                n: float(a) for n, a in zip(names, explanation.attributions[i], strict=True)
            },
            "top": plain_words(explanation, i, names, values, units),
        }
        if explanation.points is not None:
            entry["probability_points"] = {
                n: float(a) for n, a in zip(names, explanation.points[i], strict=True)
            }
        rows.append(entry)
    return {
        "method": explanation.method,
        "output": explanation.output,
        "target": explanation.target,
        "explanations": rows,
    }


class ExplainService:
    """Explainers per (model, version), built on first use and kept while the process lives."""

    def __init__(self, store: RegistryStore, artifacts: ArtifactStore) -> None:
        self.store = store
        self.artifacts = artifacts
        self._cache: dict[tuple[str, int, str | None], Explainer] = {}
        self._lock = threading.Lock()

    def explainer(self, loaded: LoadedModel, target: str | None = None) -> Explainer:
        mstore = MonitoringStore(self.store)
        chosen = target if target is not None else mstore.config(loaded.name).positive_class
        chosen = default_target(loaded, chosen)
        key = (loaded.name, loaded.number, chosen)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            try:
                reference, _ = mstore.reference(loaded.name, loaded.number)
            except Exception:
                reference = {}
            estimator = source_estimator(self.artifacts, loaded)
            built = self._cache[key] = build_explainer(loaded, estimator, reference, chosen)
            return built

    def explain(
        self, loaded: LoadedModel, X: np.ndarray, target: str | None = None
    ) -> dict[str, Any]:
        free = [f.name for f in loaded.signature.inputs if f.type == "string" and not f.categories]
        if free:  # the tabular explainers perturb values: free text, images, sequences are not
            raise InvalidRequestError(
                f"model {loaded.name!r} takes {free[0]!r} as free text: it is explained by "
                f"occlusion on POST /v1/models/{loaded.name}/predict with its media type "
                "(text/plain, image/png, application/dicom), where explanations are on by default",
                details=[{"field": free[0], "rule": "explainable", "message": "free text"}],
            )
        return self._explained(loaded, X, target)

    def _explained(
        self, loaded: LoadedModel, X: np.ndarray, target: str | None = None
    ) -> dict[str, Any]:
        """The explanation, or a ``MedserveError`` that carries no input: the explainers'
        own errors quote values (``could not convert string to float: '<the note>'``), and an
        unexpected error's message is printed wherever a traceback is logged. So only its type
        is logged and kept, and the cause is not chained (``from None``)."""
        started = time.perf_counter()
        try:
            explainer = self.explainer(loaded, target)
            result = to_json(explainer.explain(X), loaded, X)
        except MedserveError:
            raise
        except Exception as exc:
            kind = type(exc).__name__
            log.warning("explanation failed for %s v%s: %s", loaded.name, loaded.number, kind)
            raise ComputationFailedError(
                f"the explanation of {loaded.name!r} v{loaded.number} failed ({kind}); "
                "the input is not shown"
            ) from None
        metrics.EXPLAIN_SECONDS.labels(loaded.name, explainer.method).observe(
            time.perf_counter() - started
        )
        return result


_SERVICES: weakref.WeakKeyDictionary[Any, ExplainService] = weakref.WeakKeyDictionary()


def service_for(manager: Any) -> ExplainService:
    """The explain service of a model manager (one per server worker)."""
    service = _SERVICES.get(manager)
    if service is None:
        service = _SERVICES[manager] = ExplainService(manager.store, manager.artifacts)
    return service


def global_importance(
    artifacts: ArtifactStore, loaded: LoadedModel, reference: dict[str, Any], X: np.ndarray
) -> dict[str, Any]:
    """Mean absolute attribution per feature over ``X`` (a sample of at most a few hundred rows)."""
    estimator = source_estimator(artifacts, loaded)
    explainer = build_explainer(loaded, estimator, reference, default_target(loaded, None))
    explanation = explainer.explain(X)
    effects = explanation.points if explanation.points is not None else explanation.attributions
    mean_abs = np.abs(effects).mean(axis=0)
    order = np.argsort(-mean_abs)
    names = loaded.signature.feature_names
    return {
        "method": explanation.method,
        "output": "probability" if explanation.points is not None else explanation.output,
        "target": explanation.target,
        "n": len(X),
        "features": {names[j]: float(mean_abs[j]) for j in order},
    }


def on_reference_profiled(event: RegistryEvent) -> None:
    """Registry handler: the global importance of a version, once monitoring has profiled it
    (the reference is the explainers' background). Optional: a failure is logged."""
    if not isinstance(event, ReferenceProfiled):
        return
    version = event.version
    try:
        importance = global_importance(
            event.registry.artifacts, event.loaded, event.reference, event.rows
        )
    except Exception as exc:  # importance is optional; the reference is what drift needs
        log.warning("no global importance for %s: %s", version.model_name, type(exc).__name__)
        return
    MonitoringStore(event.registry.store).put_importance(
        version.model_name, version.version, importance
    )

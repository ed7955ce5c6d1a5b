"""The data plane: everything a prediction needs, with no web framework in sight.

Transports (the HTTP app, tests, future gRPC) hand it parsed JSON and get JSON-able dicts back or
a ``MedserveError``; status codes are decided in ``serving.http_errors``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from medserve import __version__
from medserve.core.context import RequestContext, local_context
from medserve.core.errors import AuditUnavailableError, ModelLoadError, ModelUnavailableError
from medserve.core.events import (
    AfterInference,
    BeforeInference,
    PredictionEvent,
    PredictionObserver,
    RefusalEvent,
)
from medserve.core.loaded_model import LoadedModel
from medserve.core.series import TimeStepExplainer, target_index
from medserve.serving.batching import AdaptiveBatcher
from medserve.serving.metrics import ModelMetrics
from medserve.serving.model_manager import ModelManager
from medserve.serving.protocols import oip_v2, records
from medserve.serving.traffic import RoutedModel

DEFAULT_REF = "production"


Explainer = Callable[[dict[str, np.ndarray]], Awaitable[Any]]
"""The explain step of the pipeline: given the outputs, the explanation to answer with."""

RemoteInfer = Callable[[LoadedModel, np.ndarray], Awaitable[dict[str, np.ndarray]]]
"""A version's inference somewhere else (the Ray backend's model deployments)."""


class DataPlane:
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self.observers: list[PredictionObserver] = []
        # What must be writable for a prediction to be answered (the audit trail, the
        # prediction log): each returns why it is not, or None. Empty: nothing is required.
        self.required: list[Callable[[], str | None]] = []
        # Extensions' pipeline hooks, around every inference (empty lists cost nothing).
        self.before_inference: list[BeforeInference] = []
        self.after_inference: list[AfterInference] = []
        self._batchers: dict[tuple[str, int], AdaptiveBatcher] = {}
        # Where inference runs when not here: the Ray backend's model deployments
        # (serving/backends/ray_ingress.py); None (uvicorn): in this process.
        self.remote: RemoteInfer | None = None
        self._metrics: dict[tuple[str, int], ModelMetrics] = {}

    # -- health ---------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready once the registry has been read and every aliased version was tried, and while
        what must be written for a prediction can be (fail closed)."""
        return self.manager.synced_once and self.unavailable() is None

    def unavailable(self) -> str | None:
        """Why predictions cannot be answered now (a trail that cannot be written), or None."""
        for check in self.required:
            reason = check()
            if reason is not None:
                return reason
        return None

    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "medserve",
            "version": __version__,
            "extensions": ["model_repository_aliases", "records_api"],
        }

    # -- models ---------------------------------------------------------------------------
    async def model(
        self, name: str, ref: str | None, context: RequestContext | None = None
    ) -> LoadedModel:
        """The version that answers: an alias with a canary split chooses one by a hash of
        the request's patient (else its id; ``context``), see ``serving/traffic.py``."""
        ref = ref or DEFAULT_REF
        model = self.manager.cached(name, ref)
        if model is not None:
            return model
        if self.manager.routes:  # only aliases with a split or shadow get here
            route = self.manager.routes.get((name, ref))
            if route is not None:
                return route.choose(context)
        return await asyncio.to_thread(self.manager.get, name, ref)

    async def model_metadata(self, name: str, ref: str | None) -> dict[str, Any]:
        model = await self.model(name, ref)
        return oip_v2.model_metadata(model, self.manager.aliases_of(model.name, model.number))

    async def model_ready(self, name: str, ref: str | None) -> bool:
        try:
            await self.model(name, ref)
        except (ModelLoadError, ModelUnavailableError):
            return False
        return True

    # -- prediction -----------------------------------------------------------------------
    def _metrics_for(self, model: LoadedModel) -> ModelMetrics:
        key = (model.name, model.number)
        metrics = self._metrics.get(key)
        if metrics is None:
            metrics = self._metrics[key] = ModelMetrics(model.name, str(model.number))
        return metrics

    async def _infer(
        self, model: LoadedModel, X: np.ndarray, context: RequestContext
    ) -> dict[str, np.ndarray]:
        """The hooks, then the model, then the hooks: a before-hook may refuse the request (it
        raises a ``MedserveError``); an after-hook sees the outputs before anyone else."""
        for before in self.before_inference:
            before(model, X, context)
        outputs = await self._run(model, X)
        for after in self.after_inference:
            after(model, X, outputs, context)
        return outputs

    async def _run(self, model: LoadedModel, X: np.ndarray) -> dict[str, np.ndarray]:
        if self.remote is not None:  # Ray: the version's deployment batches and predicts
            self._metrics_for(model).batch.observe(X.shape[0])
            return await self.remote(model, X)
        if model.batching is None:
            self._metrics_for(model).batch.observe(X.shape[0])
            return model.predict(X)
        key = (model.name, model.number)
        batcher = self._batchers.get(key)
        if batcher is None:
            batch_metric = self._metrics_for(model).batch
            batcher = self._batchers[key] = AdaptiveBatcher(
                model.predict, model.batching, on_batch=batch_metric.observe
            )
        return await batcher.submit(X)

    def _notify(
        self,
        model: LoadedModel,
        context: RequestContext,
        X: np.ndarray,
        outputs: dict[str, np.ndarray],
        started: float,
    ) -> float:
        latency = time.perf_counter() - started
        if self.observers:
            event = PredictionEvent(
                context,
                model.name,
                model.number,
                model.validator.feature_names,  # built once per version, not per request
                X,
                outputs,
                latency,
            )
            for observer in self.observers:
                observer.on_prediction(event)
        return latency

    def refused(self, event: RefusalEvent) -> None:
        """The observe step of a request answered with an error."""
        for observer in self.observers:
            observer.on_refusal(event)

    async def serve(
        self,
        model: LoadedModel,
        X: np.ndarray,
        context: RequestContext,
        protocol: str,
        started: float,
        *,
        explain: Explainer | None = None,
        logged: np.ndarray | None = None,
    ) -> tuple[dict[str, np.ndarray], Any]:
        """The pipeline's steps after decoding and validation, once each and in this order: the
        extensions' hooks around inference, the explanation when asked (``explain``), observe
        (the audit entry and prediction-log record handed to their writers) and metrics. Every
        transport (records, OIP v2, the media codecs) goes through here; ``logged`` is what
        observers may keep when it is not ``X`` (already de-identified). Returns the outputs and
        the explanation."""
        if self.required:
            reason = self.unavailable()
            if reason is not None:  # fail closed: nothing is answered that cannot be recorded
                raise AuditUnavailableError(f"{reason}; retry when it recovers")
        outputs = await self._infer(model, X, context)
        explanation = await explain(outputs) if explain is not None else None
        latency = self._notify(model, context, X if logged is None else logged, outputs, started)
        self._metrics_for(model).observe(protocol, latency, X.shape[0])
        if self.manager.shadowing and isinstance(model, RoutedModel) and model.shadows:
            shadow_log = self.manager.shadow_log
            if shadow_log is not None:  # a copy for the shadows; the answer does not wait
                shadow_log.dispatch(model, X, outputs, context, latency)
        return outputs, explanation

    async def infer_v2(
        self,
        name: str,
        ref: str | None,
        body: Any,
        binary: bytes | None = None,
        context: RequestContext | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        context = context or local_context("v2")
        model = await self.model(name, ref, context)
        X = oip_v2.parse_infer_request(model, body, binary)
        selected = oip_v2.requested_outputs(model, body)
        outputs, _ = await self.serve(model, X, context, "v2", started)
        return oip_v2.build_infer_response(model, outputs, body, selected)

    async def predict_records(
        self, name: str, ref: str | None, body: Any, context: RequestContext | None = None
    ) -> dict[str, Any]:
        started = time.perf_counter()
        context = context or local_context("records")
        model = await self.model(name, ref, context)
        X = records.parse_records_request(model, body)
        wanted, target = records.explanation_asked(body, context)
        explain: Explainer | None = None
        if wanted:

            async def explain(_: dict[str, np.ndarray]) -> Any:
                runtime = model.runtime
                if isinstance(runtime, TimeStepExplainer):  # a trajectory model
                    index = target_index(model.class_keys, target)
                    return await asyncio.to_thread(runtime.explain_time_steps, X, index)
                # lazy import (explainers (shap, scikit-learn) only when asked)
                from medserve.features.explain.service import service_for  # noqa: PLC0415

                return await asyncio.to_thread(service_for(self.manager).explain, model, X, target)

        outputs, explanation = await self.serve(
            model, X, context, "records", started, explain=explain
        )
        return records.build_records_response(model, outputs, context.request_id, explanation)

    # -- registry views used by the v1 API --------------------------------------------------
    def list_served(self) -> list[dict[str, Any]]:
        by_model: dict[str, dict[str, int]] = {}
        for name, alias, number in self.manager.served():
            by_model.setdefault(name, {})[alias] = number
        return [{"name": name, "aliases": aliases} for name, aliases in sorted(by_model.items())]

"""HTTP extension: monitoring (prediction log, outcomes, drift views, alerts, explanations).

Start-up wiring: each worker process gets its own prediction-log writer registered as a data-plane
observer (closed, and so drained, on shutdown: SIGTERM included), and optionally an in-server
monitoring schedule run by one worker at a time (a lock file in the home).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel, Field

from medserve.core.context import Principal, stored_request_id
from medserve.core.errors import (
    InvalidRequestError,
    MedserveError,
    NotFoundError,
    PermissionDeniedError,
)
from medserve.core.extensions import RegistryHandler
from medserve.core.journal import Journal, journal_dir
from medserve.core.leader import MONITOR_SCHEDULE_LOCK, LeaderLock
from medserve.core.monitoring_config import MonitoringSettings
from medserve.core.phi import load_or_create_salt, pseudonymize
from medserve.core.prediction_log import PredictionLog
from medserve.core.registry.signature import Signature
from medserve.core.series import TimeStepExplainer, target_index
from medserve.core.store.monitoring import MonitoringStore
from medserve.features.explain.service import service_for
from medserve.features.monitoring.reference import on_version_registered
from medserve.serving.extension import ServingExtension
from medserve.serving.extensions.security import AUDIT_LOG, AUDITED_SCOPE_KEY, SQL_INT_MAX
from medserve.serving.params import IsoDateTime
from medserve.serving.protocols import records
from medserve.serving.resources import ResourceKey, Resources, principal_of, resources_of

log = logging.getLogger(__name__)

router = APIRouter(tags=["monitoring"])

# What this extension provides (the prediction log only while predictions are logged).
MONITORING_STORE: ResourceKey[MonitoringStore] = ResourceKey("monitoring store")
MONITORING_SALT: ResourceKey[bytes] = ResourceKey("monitoring salt")
PREDICTION_LOG: ResourceKey[PredictionLog] = ResourceKey("prediction log")

OUTCOMES_EXAMPLE = {
    "outcomes": [
        {"prediction_id": "3f2a...-0", "outcome": "malignant"},
        {
            "patient_id": "MRN-12345",
            "model": "breast-cancer",
            "start": "2024-06-01T00:00:00Z",
            "end": "2024-06-02T00:00:00Z",
            "outcome": 1,
        },
    ]
}
EXPLAIN_EXAMPLE = {"instances": [{"feature_a": 1.0}], "class": "malignant"}


# A label or a value: what the prediction log stores (integers as JSON holds them in 64 bits).
Outcome = Annotated[
    bool
    | Annotated[int, Field(strict=True, ge=-(2**63), lt=2**63)]  # strict: no number from a string
    | Annotated[float, Field(strict=True, allow_inf_nan=False)]  # NaN or infinity observes nothing
    | Annotated[str, Field(min_length=1, max_length=256)]
    | None,
    Field(description="The observed outcome: a class label or a value."),
]


class OutcomeByPrediction(BaseModel):
    prediction_id: str = Field(min_length=1, description="An id a prediction response returned.")
    outcome: Outcome


class OutcomeByPatient(BaseModel):
    patient_id: str = Field(min_length=1, description="Pseudonymized before use; never stored.")
    model: str = Field(min_length=1)
    start: IsoDateTime = Field(description="Window start, ISO 8601 (inclusive).")
    end: IsoDateTime = Field(description="Window end, ISO 8601 (exclusive), after start.")
    outcome: Outcome


class OutcomesRequest(BaseModel):
    outcomes: list[OutcomeByPrediction | OutcomeByPatient] = Field(min_length=1)


class ExplainRequest(BaseModel):
    instances: list[dict[str, Any]] = Field(min_length=1)
    target_class: str | int | None = Field(
        default=None, alias="class", description="Explain this class (default: the predicted)."
    )


def _allow(request: Request, action: str, model: str | None) -> Principal:
    principal = principal_of(request)
    resources_of(request).guard.authorize(principal, action, model)
    return principal


def _mstore(request: Request) -> MonitoringStore:
    return resources_of(request).get(MONITORING_STORE)


def _stored_request_id(request: Request) -> str | None:
    """The caller's ``X-Request-ID`` as stores keep it (a keyed hash), or None."""
    value = request.headers.get("x-request-id")
    if not value:
        return None
    return stored_request_id(value[:64], None, resources_of(request).get(MONITORING_SALT))


def _utc(value: datetime) -> datetime:
    """A time without a zone is taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# The store-bound routes are plain ``def``: FastAPI runs them in its thread pool, so their
# synchronous SQL never holds up the event loop.


@router.post("/v1/outcomes")
def post_outcomes(
    request: Request, body: OutcomesRequest = Body(examples=[OUTCOMES_EXAMPLE])
) -> dict[str, Any]:
    """Attach outcomes by prediction id, or by (patient id, model, time window).

    The patient id is pseudonymized with the home's salt before it is compared: it is never
    stored or logged as sent. Each outcome must fit the model version of every prediction it
    matched (a class of a classifier, or 0/1 for a binary one; a number for a regressor): one
    that does not is a 400 naming the item (``details[].index``) and nothing is attached. The
    answer lists the items that matched no prediction (yet) under ``unmatched``.
    """
    resources = resources_of(request)
    salt = resources.get(MONITORING_SALT)
    guard = resources.guard
    principal = _allow(request, "predict", None)  # one principal (one rate-limit token) per request
    parsed: list[dict[str, Any]] = []
    for i, item in enumerate(body.outcomes):
        if isinstance(item, OutcomeByPrediction):
            parsed.append({"prediction_id": item.prediction_id, "outcome": item.outcome})
            continue
        guard.authorize(principal, "predict", item.model)  # each item's model
        start, end = _utc(item.start), _utc(item.end)
        if end <= start:
            raise InvalidRequestError(f"outcomes[{i}]: end must be after start")
        parsed.append(
            {
                "patient": pseudonymize(item.patient_id, salt=salt),
                "model": item.model,
                "start": start,
                "end": end,
                "outcome": item.outcome,
            }
        )

    def allowed(model: str) -> bool:  # a prediction of a model this key may not use: untouched
        try:
            guard.authorize(principal, "predict", model)
        except PermissionDeniedError:
            return False
        return True

    def keyed(request_id: str) -> str:  # a caller's own X-Request-ID is stored keyed
        return stored_request_id(request_id, None, salt)

    counts = _mstore(request).attach_outcomes(
        None, parsed, allowed, keyed=keyed, signature_of=_stored_signatures(resources)
    )
    return {
        "matched": counts,
        "labelled": sum(counts),
        "unmatched": [i for i, n in enumerate(counts) if n == 0],
    }


def _stored_signatures(resources: Resources) -> Callable[[str, int], dict[str, Any] | None]:
    """A version's stored signature (its task and class labels), read once per request; a
    version gone from the registry is not checked."""
    store = resources.registry.store
    cache: dict[tuple[str, int], dict[str, Any] | None] = {}

    def signature(model: str, version: int) -> dict[str, Any] | None:
        if (model, version) not in cache:
            try:
                cache[model, version] = dict(store.get_version(model, version).signature or {})
            except NotFoundError:
                cache[model, version] = None
        return cache[model, version]

    return signature


@router.get("/v1/models/{name}/monitoring")
def get_monitoring(request: Request, name: str, runs: int = 10) -> dict[str, Any]:
    _allow(request, "read_monitoring", name)
    store = _mstore(request)
    resources_of(request).registry.store.get_model(name)  # 404 for an unknown model
    return {
        "model": name,
        "config": store.config(name).model_dump(mode="json"),
        "runs": store.runs(name, max(1, min(runs, 100))),
        "rules": [r.__dict__ for r in store.rules(name)],
        "alerts": store.alerts(name),
    }


@router.get("/v1/models/{name}/versions/{version}/importance")
def get_importance(request: Request, name: str, version: str) -> dict[str, Any]:
    _allow(request, "read_models", name)
    v = resources_of(request).registry.store.resolve(name, version)
    _, importance = _mstore(request).reference(name, v.version)
    if importance is None:
        raise InvalidRequestError(f"no global importance was computed for {name} v{v.version}")
    return {"model": name, "version": v.version, **importance}


@router.post("/v1/alerts/{alert_id}/acknowledge")
def acknowledge(
    request: Request,
    alert_id: int = Path(ge=1, le=SQL_INT_MAX),  # past a BIGINT: a 400, not an OverflowError
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Acknowledge an alert. Audited once, in the acknowledging transaction (the store writes the
    ``alert_acknowledge`` entry with the change; the security middleware then adds none)."""
    store = _mstore(request)
    alerts = [a for a in store.alerts() if a["id"] == alert_id]
    model = alerts[0]["model"] if alerts else None
    principal = _allow(request, "write", model)
    note = (body or {}).get("note")
    trail = resources_of(request).find(AUDIT_LOG)  # kept while security is on
    result: dict[str, Any] = store.acknowledge(
        alert_id,
        principal.subject,
        str(note) if note else None,
        key_id=principal.key_id,
        request_id=_stored_request_id(request),
        audit=trail if trail is not None else False,
    )
    request.scope[AUDITED_SCOPE_KEY] = trail is not None
    return result


async def _explain(
    request: Request, name: str, ref: str | None, body: ExplainRequest
) -> dict[str, Any]:
    _allow(request, "predict", name)
    plane = resources_of(request).plane
    model = await plane.model(name, ref)
    # the records API's own parsing: a trajectory model takes its reserved 'series' and
    # 'as_of' keys here as on /predict (the plain validator would refuse them)
    X = records.parse_records_request(model, {"instances": body.instances})
    target = body.target_class
    runtime = model.runtime
    if isinstance(runtime, TimeStepExplainer):  # time-step occlusion, as /predict
        index = target_index(model.class_keys, str(target) if target is not None else None)
        steps = await asyncio.to_thread(runtime.explain_time_steps, X, index)
        return {"model": model.name, "version": model.number, "explanations": steps}
    service = service_for(plane.manager)
    result: dict[str, Any] = await asyncio.to_thread(
        service.explain, model, X, str(target) if target is not None else None
    )
    return {"model": model.name, "version": model.number, **result}


@router.post("/v1/models/{name}/explain")
async def explain(
    request: Request, name: str, body: ExplainRequest = Body(examples=[EXPLAIN_EXAMPLE])
) -> dict[str, Any]:
    """Per-feature attributions (base value + attributions = prediction) and plain words."""
    return await _explain(request, name, None, body)


@router.post("/v1/models/{name}/versions/{version}/explain")
async def explain_version(
    request: Request,
    name: str,
    version: str,
    body: ExplainRequest = Body(examples=[EXPLAIN_EXAMPLE]),
) -> dict[str, Any]:
    return await _explain(request, name, version, body)


# ------------------------------------------------------------------------------------------
# Start-up wiring
# ------------------------------------------------------------------------------------------


def _signature_lookup(store: Any) -> Any:
    def lookup(model: str, version: int) -> Signature | None:
        try:
            return Signature.model_validate(store.get_version(model, version).signature)
        except MedserveError:
            return None

    return lookup


async def _schedule(resources: Resources, settings: MonitoringSettings) -> None:
    """Run monitoring for every served model every ``schedule_interval_s`` (one worker)."""
    # lazy import (scipy, for drift tests: only a server that schedules monitoring needs it)
    from medserve.features.monitoring.runner import run_model  # noqa: PLC0415

    # one leader per deployment: a PostgreSQL advisory lock across every node of a cluster
    # (freed when the leader's session ends), an flock on SQLite (one machine)
    leader = LeaderLock(
        resources.registry.store,
        MONITOR_SCHEDULE_LOCK,
        resources.settings.home / "monitor-schedule.lock",
    )
    try:
        while not await asyncio.to_thread(leader.try_acquire):
            await asyncio.sleep(settings.schedule_interval_s)
        while True:
            await asyncio.sleep(settings.schedule_interval_s)
            registry_store = resources.registry.store
            aliases = await asyncio.to_thread(registry_store.all_aliases)
            for name, _, _ in aliases:
                try:
                    await asyncio.to_thread(
                        run_model,
                        resources.get(MONITORING_STORE),
                        registry_store,
                        name,
                        window_s=settings.window_s,
                    )
                except Exception:
                    log.exception("scheduled monitoring failed for a model")
    finally:
        leader.release()


@asynccontextmanager
async def lifespan(resources: Resources) -> AsyncIterator[None]:
    settings = MonitoringSettings()
    registry = resources.registry
    store = MonitoringStore(registry.store)
    salt = load_or_create_salt(resources.settings.home)
    resources.provide(MONITORING_STORE, store)
    resources.provide(MONITORING_SALT, salt)
    prediction_log: PredictionLog | None = None
    if settings.log_predictions:
        home = resources.settings
        journal = (
            Journal(journal_dir(home.home), "log", fsync_ms=home.journal_fsync_ms)
            if home.journal
            else None
        )
        prediction_log = PredictionLog(
            store.engine,
            settings,
            salt=salt,
            signature_of=_signature_lookup(registry.store),
            keep_text_of=lambda model: store.config(model).log_text,  # once per version
            journal=journal,
        )
        # First: a prediction the log refuses (queue full, fail_closed: a 503) must not have
        # been told to another observer (the audit trail's "predict 200") already.
        resources.plane.observers.insert(0, prediction_log)
        prediction_log.drive(asyncio.get_running_loop())
        resources.provide(PREDICTION_LOG, prediction_log)
        if settings.audit_failure == "fail_closed":  # the default
            log_in_use = prediction_log
            resources.plane.required.append(lambda: log_in_use.failure)
    task = None
    if settings.schedule_interval_s > 0:
        task = asyncio.create_task(_schedule(resources, settings))
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if prediction_log is not None:
            await asyncio.to_thread(prediction_log.close)


class MonitoringExtension(ServingExtension):
    """The prediction log, outcomes, drift and performance runs, alerts; and the drift
    reference of every version registered with a sample (a registry event handler)."""

    name = "monitoring"
    order = 30
    router = router

    def lifespan(self, resources: Resources) -> AbstractAsyncContextManager[None]:
        return lifespan(resources)

    def registry_handlers(self) -> Sequence[RegistryHandler]:
        return (on_version_registered,)


extension = MonitoringExtension()

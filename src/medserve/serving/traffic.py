"""Canary and shadow traffic inside one server process (uvicorn worker or Ray replica).

The model manager builds an ``AliasRoute`` for each alias that has a split or a shadow (see
``core/store/traffic.py``); aliases without one never reach this module, so the single-version
hot path pays nothing for it. A request is assigned to a version by a keyed hash of its patient
(``X-Patient-ID``, so a patient stays on one version while the split holds) or else of its
request id, into 10,000 buckets: the split is exact to 0.01% and needs no shared state across
replicas. The chosen version is a ``RoutedModel``: the version's ``LoadedModel`` plus the shadows
the data plane copies the request to after the live answer is computed.

A shadow runs off the event loop, on threads of its own (``SHADOW_THREADS``: never the loop's
default executor, which the live path uses for model lookups and credential checks, so a slow
shadow cannot queue a live request behind it), after the live outputs exist and without the
live request waiting on it; its failures are recorded, never raised; when more than
``MAX_SHADOWS_IN_FLIGHT`` are running the copy is dropped and counted. What it answered goes to
``traffic_shadow`` through one writer thread (bounded queue, batches), never the inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import queue
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from medserve.core.context import RequestContext
from medserve.core.errors import MedserveError
from medserve.core.loaded_model import LoadedModel
from medserve.core.store.traffic import TrafficStore

log = logging.getLogger(__name__)

BUCKETS = 10_000
MAX_SHADOWS_IN_FLIGHT = 64
SHADOW_QUEUE = 10_000
SHADOW_FLUSH_S = 0.5
SHADOW_THREADS = 2


@dataclass(eq=False)
class RoutedModel(LoadedModel):
    """A version as served behind a split alias: ``shadows`` get a copy of its requests."""

    alias: str = ""
    shadows: tuple[LoadedModel, ...] = field(default=())


def routed(model: LoadedModel, alias: str, shadows: tuple[LoadedModel, ...]) -> RoutedModel:
    return RoutedModel(
        version=model.version,
        runtime=model.runtime,
        signature=model.signature,
        metadata=model.metadata,
        operating_point=model.operating_point,
        alias=alias,
        shadows=shadows,
    )


def bucket_of(salt: bytes, key: str) -> int:
    """A stable bucket in [0, BUCKETS) for ``key`` (a keyed hash: buckets of one alias do not
    line up with another's, and a patient id is not recoverable from anything kept)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8, key=salt)
    return int.from_bytes(digest.digest(), "big") % BUCKETS


@dataclass(frozen=True)
class AliasRoute:
    name: str
    alias: str
    bounds: tuple[int, ...]  # cumulative upper bucket bound per version, in split order
    models: tuple[RoutedModel, ...]
    salt: bytes

    def choose(self, context: RequestContext | None) -> RoutedModel:
        if len(self.models) == 1:
            return self.models[0]
        key = None
        if context is not None:
            key = context.patient_id or (context.patient_ids[0] if context.patient_ids else None)
            key = key or context.request_id
        point = bucket_of(self.salt, key) if key else random.randrange(BUCKETS)
        for bound, model in zip(self.bounds, self.models, strict=True):
            if point < bound:
                return model
        return self.models[-1]


def build_route(
    name: str,
    alias: str,
    weights: list[tuple[LoadedModel, int]],
    shadows: tuple[LoadedModel, ...],
) -> AliasRoute:
    """``weights``: each answering version with its percentage (adding up to 100)."""
    bounds, models, upto = [], [], 0
    for model, weight in weights:
        if weight <= 0:
            continue
        upto += weight * (BUCKETS // 100)
        bounds.append(upto)
        models.append(routed(model, alias, shadows))
    bounds[-1] = BUCKETS
    salt = hashlib.sha256(f"medserve-split:{name}:{alias}".encode()).digest()[:16]
    return AliasRoute(name, alias, tuple(bounds), tuple(models), salt)


# -- shadows -----------------------------------------------------------------------------------


def _jsonable(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: np.asarray(v).tolist() for k, v in outputs.items()}


def agreement(live: dict[str, np.ndarray], shadow: dict[str, np.ndarray]) -> float | None:
    """Share of rows on which the two versions agree: the same label where both give labels,
    else the same first common output (within a relative 1e-3)."""
    key = "label" if "label" in live and "label" in shadow else None
    if key is None:
        common = [k for k in live if k in shadow]
        if not common:
            return None
        key = common[0]
    a, b = np.asarray(live[key]), np.asarray(shadow[key])
    if a.shape != b.shape or a.size == 0:
        return None
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        same = np.isclose(a, b, rtol=1e-3, atol=1e-6)
    else:
        same = a.astype(str) == b.astype(str)
    rows = same.reshape(same.shape[0], -1).all(axis=1)
    return float(rows.mean())


class ShadowLog:
    """The writer of shadow results: one thread, a bounded queue, batched inserts."""

    def __init__(self, store: TrafficStore) -> None:
        self.store = store
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(SHADOW_QUEUE)
        self.dropped = 0
        self.in_flight = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.executor = ThreadPoolExecutor(SHADOW_THREADS, thread_name_prefix="medserve-shadow-run")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medserve-shadow", daemon=True)
        self._thread.start()

    def put(self, row: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(row)
        except queue.Full:
            self.dropped += 1

    def _drain(self) -> None:
        rows: list[dict[str, Any]] = []
        with contextlib.suppress(queue.Empty):
            while len(rows) < 1000:
                rows.append(self.queue.get_nowait())
        if rows:
            try:
                self.store.add_shadow_results(rows)
            except MedserveError as exc:  # shadows never affect serving: count and go on
                self.dropped += len(rows)
                log.warning("shadow results not stored: %s", exc.message)

    def _run(self) -> None:
        while not self._stop.wait(SHADOW_FLUSH_S):
            while not self.queue.empty():
                self._drain()
        while not self.queue.empty():
            self._drain()

    def flush(self, timeout_s: float = 10.0) -> None:
        """Store what is queued now (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while not self.queue.empty() and time.monotonic() < deadline:
            self._drain()

    def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._stop.set()
        self._thread.join(timeout=10)

    # -- running a shadow ------------------------------------------------------------------
    def dispatch(
        self,
        model: RoutedModel,
        X: np.ndarray,
        outputs: dict[str, np.ndarray],
        context: RequestContext,
        live_s: float,
    ) -> None:
        """Copy a live request to the alias's shadows, without waiting for them."""
        if self.in_flight >= MAX_SHADOWS_IN_FLIGHT:
            self.dropped += len(model.shadows)
            return
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(
            self._shadows(model, X, outputs, context, live_s)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _shadows(
        self,
        model: RoutedModel,
        X: np.ndarray,
        outputs: dict[str, np.ndarray],
        context: RequestContext,
        live_s: float,
    ) -> None:
        try:
            for shadow in model.shadows:
                await self._one(model, shadow, X, outputs, context, live_s)
        finally:
            self.in_flight -= 1

    async def _one(
        self,
        model: RoutedModel,
        shadow: LoadedModel,
        X: np.ndarray,
        outputs: dict[str, np.ndarray],
        context: RequestContext,
        live_s: float,
    ) -> None:
        started = time.perf_counter()
        result: dict[str, np.ndarray] | None = None
        error = None
        if shadow.validator.feature_names != model.validator.feature_names:
            error = "the shadow's inputs differ from the live version's"
        else:
            try:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self.executor, shadow.predict, X)
            except Exception as exc:  # a shadow can never fail the live answer: record it
                # its kind only: a runtime's message may quote input values (patient data)
                code = getattr(exc, "code", None)
                error = f"{type(exc).__name__}" + (f" ({code})" if isinstance(code, str) else "")
        shadow_s = time.perf_counter() - started
        self.put(
            {
                "at": datetime.now(UTC),
                "model_name": model.name,
                "alias": model.alias,
                "live_version": model.number,
                "shadow_version": shadow.number,
                # a caller's own X-Request-ID may be an encounter number: kept only when
                # medserve made the id (then it is a time and random bits)
                "request_id": context.request_id if context.id_time_us is not None else "-",
                "rows": int(X.shape[0]),
                "live_outputs": orjson.dumps(_jsonable(outputs)).decode(),
                "shadow_outputs": (
                    orjson.dumps(_jsonable(result)).decode() if result is not None else None
                ),
                "agree": agreement(outputs, result) if result is not None else None,
                "live_ms": live_s * 1000.0,
                "shadow_ms": shadow_s * 1000.0 if result is not None else None,
                "error": error,
                "failed": result is None,
            }
        )

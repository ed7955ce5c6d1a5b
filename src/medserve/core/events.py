"""Prediction events: how monitoring and audit learn about predictions without slowing them.

Observers are called synchronously on the event loop right after a prediction and before the
response is sent, so they must only enqueue (a bounded queue drained by a writer thread/task).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from medserve.core.context import Principal, RequestContext
from medserve.core.registry.signature import imputed_counts

if TYPE_CHECKING:
    from medserve.core.loaded_model import LoadedModel


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1 µs more per request to make
class PredictionEvent:
    """What observers learn of one prediction; read-only by convention (observers share it)."""

    context: RequestContext
    model: str
    version: int
    feature_names: list[str]
    inputs: np.ndarray  # the validated model matrix, one row per instance
    outputs: dict[str, np.ndarray]
    latency_s: float

    @property
    def missing(self) -> np.ndarray | None:
        """Per feature, the values that arrived missing and were imputed into ``inputs`` by
        the validator (``None``: none were). ``inputs`` holds the imputed values, so this is
        how monitoring sees the missingness of what was sent."""
        return imputed_counts(self.inputs)

    @property
    def prediction_ids(self) -> list[str]:
        """One id per row, returned to the caller so outcomes can be attached later."""
        return [f"{self.context.request_id}-{i}" for i in range(self.inputs.shape[0])]


@dataclass(frozen=True, slots=True)
class RefusalEvent:
    """A prediction request answered with an error (refused or failed): what the audit trail
    keeps of it. ``principal`` is ``None`` when the caller was not authenticated."""

    request_id: str
    protocol: str
    model: str
    ref: str | None
    status: int
    code: str
    principal: Principal | None
    client: str | None
    patient_id: str | None  # as sent: an observer keeps a salted hash at most
    method: str
    path: str
    id_time_us: int | None = None  # set where medserve made ``request_id`` (else the caller's)


class PredictionObserver(Protocol):
    """Told of every prediction request before its answer is sent: the pipeline's observe
    step. Both calls run on the event loop and must only enqueue."""

    def on_prediction(self, event: PredictionEvent) -> None: ...

    def on_refusal(self, event: RefusalEvent) -> None: ...


BeforeInference = Callable[["LoadedModel", np.ndarray, RequestContext], None]
"""A pipeline hook before inference: the validated matrix and who asks; raise a
``MedserveError`` to refuse the request (it is then audited as refused)."""
AfterInference = Callable[["LoadedModel", np.ndarray, dict[str, np.ndarray], RequestContext], None]
"""A pipeline hook after inference, before the observers and the answer: the outputs by name."""

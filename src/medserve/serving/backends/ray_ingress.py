"""The Ray side of the data plane, inside an ingress replica: inference goes to the model
deployments (the multiplexed model pool, or a heavy model's own deployment) through Ray
handles; everything else (protocols, security, validation, audit, prediction log, canary and
shadow choice) stays in the ingress, exactly as on uvicorn.

A ``ServingExtension`` (the seam), so the app factory does not know about Ray: its lifespan finds
the handles the ingress deployment received (``HANDLES``, set in the replica before the app
starts) and hands the data plane a ``RemoteInference``. Under uvicorn ``HANDLES`` stays None and
this extension does nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medserve.core.loaded_model import LoadedModel
from medserve.serving.extension import ServingExtension
from medserve.serving.resources import Resources


def model_id(name: str, version: int) -> str:
    """The multiplexed model id of a version (Ray routes a model's requests to the replicas
    that hold it)."""
    return f"{name}:{version}"


@dataclass
class RayHandles:
    pool: Any  # DeploymentHandle of the model pool; None: other versions run in the ingress
    dedicated: dict[str, Any] = field(default_factory=dict)  # model id -> DeploymentHandle


HANDLES: RayHandles | None = None  # set by the ingress deployment in its replica


class RemoteInference:
    """``DataPlane.remote``: a version's inference on its Ray deployment."""

    def __init__(self, handles: RayHandles) -> None:
        self.pool = handles.pool
        self.dedicated = handles.dedicated
        self._pool_by_id: dict[str, Any] = {}

    async def __call__(self, model: LoadedModel, X: np.ndarray) -> dict[str, np.ndarray]:
        mid = model_id(model.name, model.number)
        handle = self.dedicated.get(mid)
        if handle is None and self.pool is None:  # MEDSERVE_RAY_INFERENCE=ingress
            return model.predict(X)
        if handle is None:
            handle = self._pool_by_id.get(mid)
            if handle is None:  # one options() per version, not per request
                handle = self._pool_by_id[mid] = self.pool.options(multiplexed_model_id=mid)
        outputs: dict[str, np.ndarray] = await handle.predict.remote(X)
        return outputs


@asynccontextmanager
async def lifespan(resources: Resources) -> AsyncIterator[None]:
    if HANDLES is not None:
        resources.plane.remote = RemoteInference(HANDLES)
    yield


class RayIngressExtension(ServingExtension):
    """Inference on Ray deployments, when the app runs in a Ray Serve ingress replica."""

    name = "ray"
    order = 90

    def lifespan(self, resources: Resources) -> Any:
        return lifespan(resources)


extension = RayIngressExtension()

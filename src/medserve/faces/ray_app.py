"""The Ray Serve application as an import path, for deployments that Ray itself manages:
``serve run medserve.faces.ray_app:app_builder``, ``serve deploy`` of a config file, or a
KubeRay ``RayService`` (``deploy/ray/rayservice.yaml``). ``medserve serve --backend ray`` builds
the same application.

The builder reads the environment as ``medserve serve`` does (``MEDSERVE_STORE_URI``,
``MEDSERVE_ARTIFACT_URI``, ``MEDSERVE_RAY_*``, ``AWS_*``); ``args`` from the Serve config
override ``MEDSERVE_RAY_*`` (``{"replicas": 4, "pool_replicas": 2}``).
"""

from __future__ import annotations

from typing import Any

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.faces.app import APP_FACTORY
from medserve.serving.backends.ray import RayOptions, build_application, check_ray_settings


def app_builder(args: dict[str, Any] | None = None) -> Any:
    settings = Settings()
    check_ray_settings(settings)
    options = RayOptions().model_copy(update=dict(args or {}))
    settings.home.mkdir(parents=True, exist_ok=True)
    registry = Registry.open(settings)  # migrates once, in the process that deploys
    try:
        return build_application(settings, APP_FACTORY, options, registry)
    finally:
        registry.close()

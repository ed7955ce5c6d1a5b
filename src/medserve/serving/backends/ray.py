"""``medserve serve --backend ray``: one Ray Serve application running medserve's own app.

Deployments:

- ``medserve-ingress``: medserve's ASGI app (``@serve.ingress`` with a builder, so each replica
  builds the app from the environment as a uvicorn worker does): every protocol, the security
  pipeline, audit, the prediction log, canary and shadow choice. Replicas follow alias moves by
  polling the registry (shared PostgreSQL), as workers do.
- ``medserve-models``: the model pool. ``@serve.multiplexed`` keyed ``name:version`` keeps an LRU
  of loaded versions per replica and Ray routes each version's requests to replicas holding it.
- ``model-<name>-v<version>``: a heavy version's own deployment (image models, or any version
  whose ``serving_config.ray`` says ``dedicated: true``), with ``num_cpus``, ``num_gpus`` and
  autoscaling (``min_replicas``, ``max_replicas``, ``target_ongoing_requests``) from that
  ``serving_config.ray``. Decided when the application is deployed: a heavy version aliased later
  is served by the pool until the next ``medserve serve --backend ray``.

Replicas share the registry through ``MEDSERVE_STORE_URI`` (PostgreSQL) and the artifacts through
``MEDSERVE_ARTIFACT_URI`` (S3): every ``MEDSERVE_*`` and ``AWS_*`` variable of the command is
handed to every replica (``runtime_env``), so a remote cluster sees what the command saw.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import importlib
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from medserve.core.audit import load_audit_keys
from medserve.core.crypto import Keyring
from medserve.core.errors import InvalidRequestError
from medserve.core.phi import load_or_create_salt
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.traffic import TrafficStore
from medserve.serving.backends import ray_ingress
from medserve.serving.backends.ray_ingress import model_id
from medserve.serving.server import check_exposure

APP_NAME = "medserve"
INGRESS = "medserve-ingress"
POOL = "medserve-models"
HEAVY_FLAVORS = frozenset({"image"})
_PASSED_ENV = re.compile(r"^(MEDSERVE_|AWS_|NO_PROXY$|no_proxy$|OMP_NUM_THREADS$)")


class RayOptions(BaseSettings):
    """``MEDSERVE_RAY_*``: the shape of the Ray application (the CLI sets the common ones)."""

    model_config = SettingsConfigDict(env_prefix="MEDSERVE_RAY_", extra="ignore")

    address: str | None = Field(
        default=None, description="An existing cluster (ray://host:10001 or auto); unset: local."
    )
    replicas: int = Field(default=1, ge=1, description="Ingress replicas.")
    replica_cpus: float = Field(default=0.5, gt=0, description="CPUs reserved per ingress.")
    pool_replicas: int = Field(default=1, ge=1, description="Model pool replicas.")
    pool_cpus: float = Field(default=0.5, gt=0, description="CPUs reserved per pool replica.")
    models_per_replica: int = Field(
        default=16, ge=1, description="LRU bound of versions loaded per pool replica."
    )
    max_ongoing_requests: int = Field(default=256, ge=1, description="Per replica.")
    inference: str = Field(
        default="pool",
        pattern="^(pool|ingress)$",
        description=(
            "Where versions without their own deployment run: `pool` (the multiplexed model "
            "pool, one Ray call per request) or `ingress` (in the ingress replica itself, as "
            "on uvicorn: no hop, but every ingress replica loads every served version)."
        ),
    )
    num_cpus: int | None = Field(default=None, description="Local cluster CPUs (default: all).")
    dashboard: bool = Field(default=False, description="Start Ray's dashboard (local cluster).")
    ship_keys: bool | None = Field(
        default=None,
        description=(
            "Hand the home's key files to replicas in Ray's runtime environment (stored by "
            "Ray's control plane). Unset: only with `address` (a local cluster's replicas share "
            "the home); set false where `keys/` is mounted on every node (KubeRay secret)."
        ),
    )
    object_store_bytes: int = Field(
        default=256 << 20, description="Local cluster object store size (bytes)."
    )


def deployment_name(name: str, version: int) -> str:
    return f"model-{re.sub(r'[^A-Za-z0-9_-]', '-', name)}-v{version}"


def ray_config(version: ModelVersion) -> dict[str, Any]:
    raw = version.serving_config.get("ray") or {}
    if not isinstance(raw, dict):
        raise InvalidRequestError(
            f"{version.model_name} v{version.version}: serving_config.ray must be a mapping"
        )
    return raw


def is_heavy(version: ModelVersion) -> bool:
    config = ray_config(version)
    if "dedicated" in config:
        return bool(config["dedicated"])
    return version.flavor in HEAVY_FLAVORS or bool(config.get("num_gpus"))


def dedicated_options(version: ModelVersion) -> dict[str, Any]:
    """A heavy version's deployment options, from its ``serving_config.ray``."""
    config = ray_config(version)
    actor: dict[str, Any] = {"num_cpus": float(config.get("num_cpus", 1))}
    if config.get("num_gpus"):
        actor["num_gpus"] = float(config["num_gpus"])
    options: dict[str, Any] = {"ray_actor_options": actor}
    if any(k in config for k in ("min_replicas", "max_replicas", "target_ongoing_requests")):
        options["autoscaling_config"] = {
            "min_replicas": int(config.get("min_replicas", 1)),
            "max_replicas": int(config.get("max_replicas", max(1, config.get("min_replicas", 1)))),
            "target_ongoing_requests": float(config.get("target_ongoing_requests", 2)),
        }
    else:
        options["num_replicas"] = int(config.get("replicas", 1))
    return options


def served_versions(registry: Registry) -> list[ModelVersion]:
    """Every version an alias points at, or a canary or shadow of one."""
    keys = {(m, v) for m, _, v in registry.store.all_aliases()}
    for policy in TrafficStore(registry.store).all_policies().values():
        keys |= {(policy.model, r.version) for r in policy.canaries + policy.shadows}
    return [registry.store.get_version(m, v) for m, v in sorted(keys)]


KEYS_ENV = "MEDSERVE_RAY_HOME_KEYS"


def prepare_keys(settings: Settings) -> None:
    """Create the home's key material once, in the deploying process, so that every replica on
    every node shares it: the audit keyring (one chain, one key), the PHI salt (one pseudonym
    per patient across nodes) and the encryption keyring."""
    if settings.security:
        load_audit_keys(settings.home)
    load_or_create_salt(settings.home)
    Keyring.load(settings.home, settings.encryption_key_file)


def keys_bundle(home: Path) -> str:
    """The files of ``home/keys`` as one value (base64 JSON), for replicas on other nodes."""
    folder = home / "keys"
    files = {
        p.name: base64.b64encode(p.read_bytes()).decode()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }
    return base64.b64encode(json.dumps(files).encode()).decode()


def materialize_keys(home: Path, bundle: str) -> None:
    """Write the deploying process's key files into this replica's home (mode 0600) where they
    are missing: a replica on another node has an empty home; one on the same node finds the
    same files already there. A file that exists with other content is refused, not kept: a
    node with a stale audit key or PHI salt would seal a second chain and give patients other
    pseudonyms, found only at the next ``audit verify``."""
    files = json.loads(base64.b64decode(bundle))
    folder = home / "keys"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, encoded in files.items():
        target = folder / Path(name).name
        content = base64.b64decode(encoded)
        if target.exists():
            if not hmac.compare_digest(target.read_bytes(), content):
                raise InvalidRequestError(
                    f"this replica's {target} differs from the deploying home's: one deployment "
                    "needs one key set (remove the replica's copy or give both the same file)"
                )
            continue
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content)


def replica_env(settings: Settings | None = None, *, ship_keys: bool = False) -> dict[str, str]:
    """What every replica must see: the command's ``MEDSERVE_*`` and ``AWS_*`` variables, and
    the home's key material (see ``materialize_keys``)."""
    env = {k: v for k, v in os.environ.items() if _PASSED_ENV.match(k)}
    env["MEDSERVE_MIGRATE_ON_START"] = "false"  # migrated once, by the command
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if ship_keys and settings is not None and (settings.home / "keys").is_dir():
        env[KEYS_ENV] = keys_bundle(settings.home)
    return env


def app_builder(app_factory: str) -> Callable[[], Any]:
    """The ingress's ASGI app, built in each replica from its environment (``module:callable``,
    named by the faces layer, as for uvicorn)."""

    def build() -> Any:
        bundle = os.environ.get(KEYS_ENV)
        if bundle:
            materialize_keys(Path(os.environ.get("MEDSERVE_HOME", ".medserve")), bundle)
        module, _, attribute = app_factory.partition(":")
        return getattr(importlib.import_module(module), attribute)()

    return build


def _model_deployment(max_models: int) -> Any:
    """The model pool's class (a heavy version's deployment uses it with room for one)."""
    from ray import serve  # noqa: PLC0415 (optional: the ray extra)

    class ModelPool:
        """Loads versions by ``name:version`` from the shared registry and artifact store."""

        def __init__(self) -> None:
            settings = Settings()
            self.registry = Registry.open(settings, run_migrations=False)
            self.threads = settings.onnx_intra_op_threads

        @serve.multiplexed(max_num_models_per_replica=max_models)
        async def get_model(self, mid: str) -> Any:
            # lazy import (keeps this module importable without Ray's replica context)
            from medserve.core.loaded_model import (  # noqa: PLC0415
                load_version,
                operating_point_in,
            )

            name, _, number = mid.rpartition(":")
            store = self.registry.store

            def load() -> Any:
                version = store.get_version(name, int(number))
                return load_version(
                    self.registry.artifacts,
                    version,
                    intra_op_threads=self.threads,
                    operating_point=operating_point_in(store, version),
                )

            return await asyncio.to_thread(load)

        async def predict(self, X: Any) -> Any:
            model = await self.get_model(serve.get_multiplexed_model_id())
            return model.predict(X)

    return ModelPool


def build_application(
    settings: Settings, app_factory: str, options: RayOptions, registry: Registry
) -> Any:
    """The Serve application: ingress -> (pool, heavy versions' own deployments)."""
    from ray import serve as ray_serve  # noqa: PLC0415 (optional: the ray extra)

    serve: Any = ray_serve  # Ray's overloads of serve.deployment do not type-check

    prepare_keys(settings)
    ship = options.ship_keys if options.ship_keys is not None else bool(options.address)
    env = replica_env(settings, ship_keys=ship)
    # a credential's rate limit is one count for every replica on PostgreSQL (SQLite: each
    # replica enforces limit / replicas)
    env.setdefault("MEDSERVE_SHARED_RATE_LIMITS", "true")
    env.setdefault("MEDSERVE_WORKERS", str(options.replicas))
    runtime_env = {"env_vars": env}
    pool = serve.deployment(
        _model_deployment(options.models_per_replica),
        name=POOL,
        num_replicas=options.pool_replicas,
        max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options={"num_cpus": options.pool_cpus, "runtime_env": runtime_env},
    ).bind()
    dedicated: dict[str, Any] = {}
    for version in served_versions(registry):
        if not is_heavy(version):
            continue
        chosen = dedicated_options(version)
        chosen["ray_actor_options"]["runtime_env"] = runtime_env
        deployment = serve.deployment(
            _model_deployment(1),
            name=deployment_name(version.model_name, version.version),
            max_ongoing_requests=options.max_ongoing_requests,
            **chosen,
        )
        dedicated[model_id(version.model_name, version.version)] = deployment.bind()

    class MedserveIngress:
        """medserve's app; its constructor hands the model handles to the app's data plane."""

        def __init__(self, pool: Any, dedicated: dict[str, Any], use_pool: bool) -> None:
            if use_pool or dedicated:
                ray_ingress.HANDLES = ray_ingress.RayHandles(pool if use_pool else None, dedicated)

    ingress = serve.deployment(
        serve.ingress(app_builder(app_factory))(MedserveIngress),
        name=INGRESS,
        num_replicas=options.replicas,
        max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options={"num_cpus": options.replica_cpus, "runtime_env": runtime_env},
    )
    return ingress.bind(pool, dedicated, options.inference == "pool")


def start_ray(settings: Settings, options: RayOptions) -> None:
    """Join ``options.address`` or start a local cluster on 127.0.0.1 (no dashboard unless
    asked), then Serve's HTTP proxy on ``settings.host:settings.port``."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    try:
        import ray  # noqa: PLC0415 (optional: the ray extra)
        from ray import serve  # noqa: PLC0415
    except ImportError as exc:
        raise InvalidRequestError(
            "the Ray backend needs Ray Serve: pip install 'medserve[ray]'"
        ) from exc
    if not ray.is_initialized():
        if options.address:
            ray.init(address=options.address, log_to_driver=False)
        else:
            context: Any = ray.init(
                num_cpus=options.num_cpus,
                include_dashboard=options.dashboard,
                dashboard_host="127.0.0.1",
                _node_ip_address="127.0.0.1",
                object_store_memory=options.object_store_bytes,
                log_to_driver=False,
            )
            # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when first imported: without it
            # the node takes the host's address and its gRPC servers listen on every interface
            gcs = str(context.address_info["gcs_address"])
            if not gcs.startswith("127.0.0.1:"):
                ray.shutdown()
                raise InvalidRequestError(
                    f"the local Ray cluster did not start on loopback (its GCS is at {gcs}): "
                    "set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is imported, or join a "
                    "cluster you secured with --ray-address"
                )
    serve.start(http_options={"host": settings.host, "port": settings.port, "location": "HeadOnly"})


def deploy(settings: Settings, app_factory: str, options: RayOptions) -> None:
    """Deploy (or update in place: Serve rolls replicas over) the medserve application."""
    from ray import serve  # noqa: PLC0415 (optional: the ray extra)

    registry = Registry.open(settings)  # migrates once, here
    try:
        application = build_application(settings, app_factory, options, registry)
    finally:
        registry.close()
    # Serve's own per-request access log is off: medserve writes its own (MEDSERVE_ACCESS_LOG),
    # and a second line per request costs the replica as much as a small model's inference
    logging = {"enable_access_log": False, "log_level": "WARNING"}
    serve.run(application, name=APP_NAME, route_prefix="/", blocking=False, logging_config=logging)


def check_ray_settings(settings: Settings) -> None:
    """Refuse what the Ray backend does not serve, before anything starts: Ray Serve's proxy
    speaks HTTP only here, so a gRPC port (``--grpc-port`` or ``MEDSERVE_GRPC_PORT``) would
    otherwise be silently unserved, or bound by every replica at once."""
    if settings.grpc_port is not None:
        raise InvalidRequestError(
            "gRPC is not served on the Ray backend (Ray Serve's proxy carries HTTP here): drop "
            "--grpc-port / MEDSERVE_GRPC_PORT, or serve gRPC with --backend uvicorn",
            details=[
                {
                    "field": "grpc_port",
                    "rule": "unsupported_with_backend_ray",
                    "message": "gRPC is served by the uvicorn backend only",
                }
            ],
        )
    if settings.tls_certfile or settings.tls_keyfile:
        raise InvalidRequestError(
            "TLS on the Ray backend is terminated in front of Ray Serve (an ingress or load "
            "balancer): --tls-cert/--tls-key apply to the uvicorn backend"
        )


def run_ray(settings: Settings, app_factory: str, options: RayOptions) -> None:
    """``medserve serve --backend ray``: deploy, print where it answers, serve until a signal."""
    check_ray_settings(settings)
    check_exposure(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    os.environ["MEDSERVE_HOME"] = str(settings.home.resolve())
    os.environ["MEDSERVE_SECURITY"] = "true" if settings.security else "false"
    # where rate limits cannot be shared (SQLite), each ingress replica enforces its share
    os.environ["MEDSERVE_WORKERS"] = str(options.replicas)
    started = time.monotonic()
    start_ray(settings, options)
    deploy(settings, app_factory, options)
    print(
        f"medserve on Ray Serve: http://{settings.host}:{settings.port} "
        f"({options.replicas} ingress replica(s), model pool x{options.pool_replicas}; "
        f"ready in {time.monotonic() - started:.1f} s)",
        file=sys.stderr,
        flush=True,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    import ray  # noqa: PLC0415 (optional: the ray extra)
    from ray import serve  # noqa: PLC0415

    serve_api: Any = serve
    # graceful: each replica's app shuts down (journals, writers flushed); on a cluster that
    # may run other Serve applications only medserve's is deleted
    if options.address:
        serve_api.delete(APP_NAME)
    else:
        serve_api.shutdown()
    ray_api: Any = ray
    ray_api.shutdown()

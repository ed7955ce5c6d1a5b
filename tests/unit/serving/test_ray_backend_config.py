"""The Ray backend's configuration, without starting Ray: heavy versions and their deployment
options, the key material replicas share, and the KubeRay manifest's application."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medserve.core.errors import InvalidRequestError
from medserve.core.registry.entities import ModelVersion
from medserve.core.settings import Settings
from medserve.faces.cli import app as cli
from medserve.serving.backends.ray import (
    KEYS_ENV,
    RayOptions,
    check_ray_settings,
    dedicated_options,
    deployment_name,
    is_heavy,
    keys_bundle,
    materialize_keys,
    replica_env,
)

ROOT = Path(__file__).resolve().parents[3]


def _version(flavor: str = "onnx", **serving: object) -> ModelVersion:
    return ModelVersion(
        model_name="ct lesion",
        version=3,
        description="",
        artifact_sha256="0" * 64,
        artifact_filename="model.onnx",
        flavor=flavor,
        runtime="onnxruntime",
        runtime_reason="",
        source_flavor=flavor,
        source_artifact_sha256=None,
        signature={},
        library_versions={},
        tags={},
        serving_config=dict(serving),
        created_by="t",
        created_at=datetime.now(UTC),
    )


def test_heavy_versions_get_their_own_deployment_options() -> None:
    assert not is_heavy(_version())
    assert is_heavy(_version("image"))
    assert not is_heavy(_version("image", ray={"dedicated": False}))
    gpu = _version(ray={"num_gpus": 1, "num_cpus": 2, "min_replicas": 1, "max_replicas": 3})
    assert is_heavy(gpu)
    options = dedicated_options(gpu)
    assert options["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 1.0}
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 2.0,
    }
    assert dedicated_options(_version("image"))["num_replicas"] == 1
    assert deployment_name("ct lesion", 3) == "model-ct-lesion-v3"


def test_replicas_get_the_deploying_homes_keys(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "keys").mkdir(parents=True)
    (home / "keys" / "phi_salt").write_bytes(b"\x01" * 32)
    (home / "keys" / "audit_keys.json").write_text('{"primary": "a"}')
    bundle = keys_bundle(home)
    replica = tmp_path / "replica-home"
    materialize_keys(replica, bundle)
    assert (replica / "keys" / "phi_salt").read_bytes() == b"\x01" * 32
    assert (replica / "keys" / "audit_keys.json").stat().st_mode & 0o777 == 0o600
    materialize_keys(replica, bundle)  # the same files already there: nothing to do
    (replica / "keys" / "phi_salt").chmod(0o600)
    (replica / "keys" / "phi_salt").write_bytes(b"stale")
    with pytest.raises(InvalidRequestError, match="differs from the deploying home"):
        materialize_keys(replica, bundle)  # a second key set would split the audit chain
    assert (replica / "keys" / "phi_salt").read_bytes() == b"stale"  # never overwritten


def test_keys_travel_in_the_runtime_env_only_when_asked(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    (settings.home / "keys").mkdir(parents=True)
    (settings.home / "keys" / "phi_salt").write_bytes(b"\x01" * 32)
    assert KEYS_ENV not in replica_env(settings)  # a local cluster shares the home
    assert KEYS_ENV in replica_env(settings, ship_keys=True)


def test_grpc_is_refused_on_the_ray_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDSERVE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDSERVE_SECURITY", "false")
    result = CliRunner().invoke(cli, ["serve", "--backend", "ray", "--grpc-port", "9301"])
    assert result.exit_code != 0
    assert "gRPC is not served on the Ray backend" in result.output
    assert not (tmp_path / "home").exists()  # refused before anything started or was created
    with pytest.raises(InvalidRequestError) as refused:
        check_ray_settings(Settings(home=tmp_path / "home", grpc_port=9301))
    assert refused.value.details[0]["field"] == "grpc_port"


def test_the_rayservice_manifest_names_a_real_application() -> None:
    manifest = yaml.safe_load((ROOT / "deploy" / "ray" / "rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService"
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    [app] = serve_config["applications"]
    module, _, attribute = app["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    options = RayOptions().model_copy(update=app["args"])
    assert set(app["args"]) <= set(RayOptions.model_fields)
    assert options.replicas == 2

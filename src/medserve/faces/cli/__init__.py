"""The ``medserve`` command. Thin: every command calls the registry/serving APIs and renders."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.table import Table

from medserve.core.errors import InvalidRequestError, MedserveError
from medserve.core.extensions import extensions
from medserve.core.loaded_model import load_version_locally
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import current_user, sample_from_file
from medserve.core.registry.signature import Signature
from medserve.core.settings import Settings
from medserve.faces.cli.monitoring import register as register_monitoring
from medserve.faces.cli.security import register as register_security
from medserve.faces.cli.support import console, split_ref
from medserve.faces.cli.support import fail as _fail
from medserve.faces.cli.support import open_registry as _registry
from medserve.faces.cli.training import register as register_training
from medserve.features.interop.feature_map import FhirMap

app = typer.Typer(help="medserve: clinical model-as-a-service.", no_args_is_help=True)
models_app = typer.Typer(help="Registered models, versions and aliases.", no_args_is_help=True)
app.add_typer(models_app, name="models")

F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _main(
    home: Annotated[
        Path | None, typer.Option(help="medserve home (default $MEDSERVE_HOME or ./.medserve).")
    ] = None,
) -> None:
    if home is not None:
        os.environ["MEDSERVE_HOME"] = str(home)


def _parse_tags(tags: list[str] | None) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in tags or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequestError(f"bad tag {item!r}: expected KEY=VALUE")
        parsed[key] = value
    return parsed


# ------------------------------------------------------------------------------------------
@app.command()
def init() -> None:
    """Create the medserve home (registry database and artifact store)."""
    try:
        settings = Settings()
        with _registry():
            pass
    except MedserveError as exc:
        raise _fail(exc) from exc
    console.print(f"medserve home ready at [bold]{settings.home.resolve()}[/]")
    console.print(f"registry: {settings.resolved_store_uri}")
    console.print(f"artifacts: {settings.resolved_artifact_root}")


@models_app.command("register")
def models_register(
    name: str,
    path: Path,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new version.")] = None,
    sample: Annotated[
        Path | None,
        typer.Option(help="Sample rows (CSV/JSON/Parquet): signature and ONNX conversion check."),
    ] = None,
    description: str = "",
    tag: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            help="Allow pickle/joblib artifacts, which can run code on load. Admins only."
        ),
    ] = False,
) -> None:
    """Register a model file (.onnx, .skops, XGBoost .json/.ubj, LightGBM .txt, MLflow dir)."""
    try:
        with console.status("registering..."), _registry() as registry:
            frame = sample_from_file(sample) if sample else None
            version = registry.register(
                name,
                path,
                sample=frame,
                alias=alias,
                description=description,
                tags=_parse_tags(tag),
                trust_pickle=trust_pickle,
            )
    except MedserveError as exc:
        raise _fail(exc) from exc
    console.print(
        f"registered [bold]{name}[/] version [bold]{version.version}[/] "
        f"(runtime {version.runtime}; {version.runtime_reason})"
        + (f", alias [green]{alias}[/]" if alias else "")
    )


@models_app.command("ensemble")
def models_ensemble(
    name: str,
    spec_path: Annotated[
        Path,
        typer.Argument(
            help="YAML/JSON: {members: [{model, version, weight}], combiner: weighted_mean|"
            "logistic, ...}; versions may be aliases (pinned to their numbers now)."
        ),
    ],
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new version.")] = None,
    sample: Annotated[
        Path | None, typer.Option(help="Sample rows: the drift reference and global importance.")
    ] = None,
    description: str = "",
    tag: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
) -> None:
    """Register a version that combines registered versions (see README, Ensembles)."""

    # lazy import (pulls pandas)
    from medserve.features.composition.register import register_ensemble  # noqa: PLC0415

    try:
        spec = yaml.safe_load(spec_path.read_text())
        with console.status("registering..."), _registry() as registry:
            version = register_ensemble(
                registry,
                name,
                spec,
                alias=alias,
                description=description,
                tags=_parse_tags(tag),
                sample=sample_from_file(sample) if sample else None,
            )
    except MedserveError as exc:
        raise _fail(exc) from exc
    except (OSError, ValueError) as exc:
        raise _fail(exc) from exc
    console.print(
        f"registered ensemble [bold]{name}[/] version [bold]{version.version}[/] "
        f"({version.runtime_reason})" + (f", alias [green]{alias}[/]" if alias else "")
    )


@models_app.command("list")
def models_list(
    search: Annotated[str | None, typer.Option(help="Only names containing this.")] = None,
    page_size: int = 100,
    page_token: str | None = None,
) -> None:
    """List registered models with their aliases."""
    try:
        with _registry() as registry:
            page = registry.store.list_models(
                name_contains=search, page_size=page_size, page_token=page_token
            )
            rows = []
            for model in page.items:
                aliases = registry.store.list_aliases(model.name)
                latest = registry.store.list_versions(model.name, page_size=1).items
                rows.append((model, aliases, latest[0].version if latest else None))
    except MedserveError as exc:
        raise _fail(exc) from exc
    table = Table(title="Registered models")
    table.add_column("name", no_wrap=True)
    table.add_column("latest", justify="right")
    table.add_column("aliases", no_wrap=True)
    table.add_column("description", max_width=48, overflow="ellipsis", no_wrap=True)
    table.add_column("updated", no_wrap=True)
    for model, aliases, latest_version in rows:
        alias_text = ", ".join(f"{a} → v{v}" for a, v in sorted(aliases.items())) or "-"
        table.add_row(
            model.name,
            str(latest_version or "-"),
            alias_text,
            model.description,
            model.updated_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)
    if page.next_page_token:
        console.print(f"more: --page-token {page.next_page_token}")


def _versions_table(versions: list[ModelVersion], aliases: dict[str, int]) -> Table:
    by_version: dict[int, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(number, []).append(alias)
    table = Table(title="Versions")
    for column in ("version", "aliases", "runtime", "flavor", "source", "sha256", "created"):
        table.add_column(column)
    for v in versions:
        table.add_row(
            str(v.version),
            ", ".join(sorted(by_version.get(v.version, []))) or "-",
            v.runtime,
            v.flavor,
            v.source_flavor,
            v.artifact_sha256[:12],
            f"{v.created_at:%Y-%m-%d %H:%M} by {v.created_by}",
        )
    return table


@models_app.command("versions")
def models_versions(name: str, page_size: int = 100) -> None:
    """List a model's versions, newest first."""
    try:
        with _registry() as registry:
            versions = registry.store.list_versions(name, page_size=page_size).items
            aliases = registry.store.list_aliases(name)
    except MedserveError as exc:
        raise _fail(exc) from exc
    console.print(_versions_table(versions, aliases))


@models_app.command("show")
def models_show(ref: str) -> None:
    """Show a model (NAME) or one version (NAME@VERSION|ALIAS) with signature and alias history."""
    try:
        name, _, version_ref = ref.partition("@")
        with _registry() as registry:
            model = registry.store.get_model(name)
            aliases = registry.store.list_aliases(name)
            history = registry.store.alias_history(name)
            versions = registry.store.list_versions(name).items
            version = registry.store.resolve(name, version_ref) if version_ref else None
    except MedserveError as exc:
        raise _fail(exc) from exc
    console.print(f"[bold]{model.name}[/] — {model.description or 'no description'}")
    console.print(
        f"created {model.created_at:%Y-%m-%d %H:%M} by {model.created_by}; tags {model.tags}"
    )
    if version is None:
        console.print(_versions_table(versions, aliases))
    else:
        _print_version(version)
    hist = Table(title="Alias history")
    for column in ("when", "alias", "from", "to", "who", "reason"):
        hist.add_column(column)
    for event in history:
        hist.add_row(
            f"{event.at:%Y-%m-%d %H:%M:%S}",
            event.alias,
            f"v{event.from_version}" if event.from_version else "-",
            f"v{event.to_version}" if event.to_version else "(deleted)",
            event.actor,
            event.reason,
        )
    console.print(hist)


def _print_version(version: ModelVersion) -> None:
    console.print(
        f"version {version.version}: runtime [bold]{version.runtime}[/] ({version.runtime_reason})"
    )
    console.print(f"artifact {version.artifact_filename} sha256 {version.artifact_sha256}")
    console.print(f"libraries: {version.library_versions}")
    signature = Signature.model_validate(version.signature)
    table = Table(title=f"Signature ({signature.task}; classes {signature.class_labels})")
    for column in ("feature", "type", "required", "missing", "range", "categories"):
        table.add_column(column)
    for f in signature.inputs:
        span = "-" if f.minimum is None and f.maximum is None else f"[{f.minimum}, {f.maximum}]"
        missing = f.missing if f.missing == "reject" else f"impute {f.impute_value}"
        cats = ", ".join(map(str, f.categories[:6])) if f.categories else "-"
        table.add_row(f.name, f.type, "yes" if f.required else "no", missing, span, cats)
    console.print(table)


@models_app.command("alias")
def models_alias(
    name: str,
    alias: str,
    version: Annotated[int | None, typer.Argument(help="Version to point at.")] = None,
    delete: Annotated[bool, typer.Option(help="Remove the alias.")] = False,
    reason: Annotated[str, typer.Option(help="Why (kept in the alias history).")] = "",
    override_approver: Annotated[
        str | None,
        typer.Option(
            help="Move production despite the promotion gate: the approver's name "
            "(needs --reason; recorded in the alias history)."
        ),
    ] = None,
) -> None:
    """Point an alias (production, staging, ...) at a version, or delete it.

    Moving ``production`` goes through the promotion gate (complete card, acceptance criteria
    met, no train/test patient overlap)."""
    # lazy import (pulls the evaluation report (matplotlib))
    from medserve.features.governance.gate import set_alias_gated  # noqa: PLC0415

    try:
        with _registry() as registry:
            if delete:
                registry.delete_alias(name, alias, actor=current_user(), reason=reason)
                console.print(f"alias {alias} of {name} deleted")
                return
            if version is None:
                raise InvalidRequestError("give a VERSION, or --delete")
            event = set_alias_gated(
                registry,
                name,
                alias,
                version,
                actor=current_user(),
                reason=reason,
                override_approver=override_approver,
            )
    except MedserveError as exc:
        raise _fail(exc) from exc
    moved = f"from v{event.from_version} " if event.from_version else ""
    console.print(f"{name}@{alias} moved {moved}to v{event.to_version}")
    if event.reason.startswith("OVERRIDE"):
        console.print(f"[yellow]{event.reason}[/]", highlight=False)


@models_app.command("signature")
def models_signature(
    ref: str,
    edit: Annotated[
        Path | None, typer.Option(help="JSON/YAML file with the new signature inputs.")
    ] = None,
) -> None:
    """Print a version's signature as JSON, or replace it with --edit FILE."""

    try:
        name, version_ref = split_ref(ref)
        with _registry() as registry:
            version = registry.store.resolve(name, version_ref)
            if edit is not None:
                data = yaml.safe_load(edit.read_text())
                current = Signature.model_validate(version.signature)
                inputs = data["inputs"] if isinstance(data, dict) else data
                updated = current.model_copy(update={"inputs": Signature(inputs=inputs).inputs})
                if len(updated.inputs) != len(current.inputs):
                    raise InvalidRequestError(
                        f"the model takes {len(current.inputs)} inputs; "
                        f"the edit has {len(updated.inputs)}"
                    )
                version = registry.store.update_version(
                    name,
                    version.version,
                    signature=updated.model_dump(mode="json"),
                    actor=current_user(),
                )
    except MedserveError as exc:
        raise _fail(exc) from exc
    except (OSError, KeyError, ValueError) as exc:
        raise _fail(exc) from exc
    console.print_json(json.dumps(version.signature))


@models_app.command("fhir-map")
def models_fhir_map(
    ref: str,
    set_: Annotated[
        Path | None,
        typer.Option(
            "--set", help="JSON/YAML file with the FHIR feature map (serving_config.fhir)."
        ),
    ] = None,
) -> None:
    """Print a version's FHIR feature map, or set it with --set FILE (checked against the
    signature; servers pick it up on their next registry poll, no reload of the model)."""

    try:
        name, version_ref = split_ref(ref)
        with _registry() as registry:
            version = registry.store.resolve(name, version_ref)
            if set_ is not None:
                fmap = FhirMap.model_validate(yaml.safe_load(set_.read_text()))
                fmap.check_against(Signature.model_validate(version.signature))
                config = {**version.serving_config, "fhir": fmap.model_dump(mode="json")}
                version = registry.store.update_version(
                    name, version.version, serving_config=config, actor=current_user()
                )
    except MedserveError as exc:
        raise _fail(exc) from exc
    except (OSError, KeyError, ValueError) as exc:
        raise _fail(exc) from exc
    console.print_json(json.dumps(version.serving_config.get("fhir")))


@app.command()
def predict(
    ref: Annotated[str, typer.Argument(help="NAME[@VERSION|ALIAS]; NAME alone means production.")],
    input_path: Annotated[Path, typer.Option("--input", "-i", help="CSV, JSON or JSONL rows.")],
    output: Annotated[str, typer.Option(help="table or json")] = "table",
) -> None:
    """Predict locally (no server) with a registered version, validating the rows first."""

    try:
        name, version_ref = split_ref(ref)
        rows = sample_from_file(input_path).to_dict(orient="records")
        with _registry() as registry:
            version = registry.store.resolve(name, version_ref)
            model = load_version_locally(registry, version)
        result = model.predict_records(rows)
    except MedserveError as exc:
        raise _fail(exc) from exc
    if output == "json":
        sys.stdout.write(json.dumps(result, default=str) + "\n")
        return
    table = Table(title=f"{name} v{version.version}")
    table.add_column("row")
    keys = list(result["predictions"][0].keys()) if result["predictions"] else []
    for key in keys:
        table.add_column(key)
    for i, pred in enumerate(result["predictions"]):
        table.add_row(str(i), *(_fmt(pred[k]) for k in keys))
    console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: one per core).")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="TLS certificate chain (PEM): serve HTTPS.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).")] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(help="CA bundle (PEM): require client certificates signed by it (mTLS)."),
    ] = None,
) -> None:
    """Serve every aliased model over HTTP (Open Inference Protocol v2 and the records API).

    Authentication is on: create a key first with `medserve keys create`.
    """
    # lazy import (the CLI imports the web app only to serve)
    from medserve.faces.app import APP_FACTORY  # noqa: PLC0415

    # lazy import (the CLI imports uvicorn only to serve)
    from medserve.serving.server import run_server  # noqa: PLC0415

    settings = Settings()
    overrides = {
        "host": host,
        "port": port,
        "workers": workers,
        "tls_certfile": tls_cert,
        "tls_keyfile": tls_key,
        "tls_client_ca": tls_client_ca,
    }
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    try:
        run_server(settings, APP_FACTORY)
    except MedserveError as exc:
        raise _fail(exc) from exc


@app.command()
def demo(
    serve_models: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve on 127.0.0.1:8000 after registering.")
    ] = True,
    port: int = 8000,
    drift: Annotated[
        bool, typer.Option(help="Play a drift scenario: shifted stream, alert, report.")
    ] = False,
) -> None:
    """Train the demo models on scikit-learn's bundled data, register them, and serve them."""
    # lazy import (the demo trains models (scikit-learn))
    from medserve.faces.demo import run_demo  # noqa: PLC0415

    # The demo alone runs open (loopback only; the server refuses any other host without auth).
    os.environ["MEDSERVE_SECURITY"] = "false"
    try:
        run_demo(console, serve=serve_models, port=port, drift=drift)
    except MedserveError as exc:
        raise _fail(exc) from exc


def _register_groups() -> None:
    """The built-in command groups, then every extension's (``Extension.cli_groups``)."""
    for register in (register_training, register_security, register_monitoring):
        register(app, models_app)
    for extension in extensions():
        for group in extension.cli_groups():
            app.add_typer(group)


_register_groups()

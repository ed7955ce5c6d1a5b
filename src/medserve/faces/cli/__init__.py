"""The ``medserve`` command. Thin: every command calls the registry/serving APIs and renders."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from medserve.core.errors import MedserveError
from medserve.core.extensions import extensions
from medserve.core.loaded_model import load_version_locally
from medserve.core.registry.service import sample_from_file
from medserve.core.settings import Settings
from medserve.faces.cli.chat import register as register_chat
from medserve.faces.cli.models import models_app
from medserve.faces.cli.monitoring import register as register_monitoring
from medserve.faces.cli.privacy import register as register_privacy
from medserve.faces.cli.security import register as register_security
from medserve.faces.cli.support import console, split_ref
from medserve.faces.cli.support import fail as _fail
from medserve.faces.cli.support import open_registry as _registry
from medserve.faces.cli.training import register as register_training

app = typer.Typer(help="medserve: clinical model-as-a-service.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.callback()
def _main(
    home: Annotated[
        Path | None, typer.Option(help="medserve home (default $MEDSERVE_HOME or ./.medserve).")
    ] = None,
) -> None:
    if home is not None:
        os.environ["MEDSERVE_HOME"] = str(home)


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
    for register in (
        register_training,
        register_security,
        register_monitoring,
        register_privacy,
        register_chat,
    ):
        register(app, models_app)
    for extension in extensions():
        for group in extension.cli_groups():
            app.add_typer(group)


_register_groups()

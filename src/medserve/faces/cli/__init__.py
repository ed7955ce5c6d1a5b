"""The ``medserve`` command. Thin: every command calls the registry/serving APIs and renders."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from medserve import __version__
from medserve.core.errors import MedserveError
from medserve.core.extensions import extensions
from medserve.core.loaded_model import load_version_locally
from medserve.core.settings import Settings
from medserve.faces.cli.chat import register as register_chat
from medserve.faces.cli.llm_models import register as register_llm_models
from medserve.faces.cli.models import models_app
from medserve.faces.cli.monitoring import register as register_monitoring
from medserve.faces.cli.privacy import register as register_privacy
from medserve.faces.cli.security import register as register_security
from medserve.faces.cli.support import console, err_console, print_json, read_rows, split_ref
from medserve.faces.cli.support import fail as _fail
from medserve.faces.cli.support import open_registry as _registry
from medserve.faces.cli.traffic import register as register_traffic
from medserve.faces.cli.training import register as register_training


class _Cli(typer.Typer):
    """The root command: an unexpected error is one paragraph on stderr (exit 1) instead of a
    traceback, unless ``--debug`` (or ``MEDSERVE_DEBUG=1``) asks for the traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            code = super().__call__(*args, **{"standalone_mode": False, **kwargs})
        except typer.TyperException as exc:  # usage errors (exit 2): click's message
            if type(exc).__name__ == "NoSuchOption":
                err_console.print(_unknown_option(exc), highlight=False, markup=False)
            else:
                exc.show()  # type: ignore[attr-defined]
            sys.exit(getattr(exc, "exit_code", 2))
        except typer.Abort:
            err_console.print("aborted")
            sys.exit(1)
        except Exception as exc:
            if os.environ.get("MEDSERVE_DEBUG", "").lower() in ("1", "true", "yes"):
                raise
            err_console.print(
                f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc))}\n"
                "This is unexpected: run the command again with --debug (after `medserve`) "
                "for the traceback, and report it.",
                highlight=False,
            )
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _unknown_option(exc: Exception) -> str:
    """An unknown option, with the command's valid ones (click lists only near misses)."""
    ctx = getattr(exc, "ctx", None)
    params = ctx.command.params if ctx is not None else []
    valid = sorted({opt for param in params for opt in param.opts if opt.startswith("-")})
    where = ctx.command_path if ctx is not None else "medserve"
    name = getattr(exc, "option_name", "?")
    return f"error: {where} has no option {name}. Its options: {', '.join(valid)}, --help."


app = _Cli(
    help="medserve: clinical model-as-a-service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(models_app, name="models")


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"medserve {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(
    home: Annotated[
        Path | None, typer.Option(help="medserve home (default $MEDSERVE_HOME or ./.medserve).")
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    if home is not None:
        os.environ["MEDSERVE_HOME"] = str(home)
    if debug:
        os.environ["MEDSERVE_DEBUG"] = "1"


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
    if settings.artifact_uri:  # S3: the bucket, and this machine's read-through cache
        console.print(
            f"artifacts: {settings.artifact_uri} (cache {settings.resolved_artifact_root})"
        )
    else:
        console.print(f"artifacts: {settings.resolved_artifact_root}")


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class ServeBackend(StrEnum):
    uvicorn = "uvicorn"
    ray = "ray"


class PredictOutput(StrEnum):
    table = "table"
    json = "json"


@app.command()
def predict(
    ref: Annotated[str, typer.Argument(help="NAME[@VERSION|ALIAS]; NAME alone means production.")],
    input_path: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            help='Rows: CSV, JSON lines, a JSON list, or the API\'s {"instances": [...]}.',
        ),
    ],
    output: Annotated[PredictOutput, typer.Option(help="table or json.")] = PredictOutput.table,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --output json.")] = False,
) -> None:
    """Predict locally (no server) with a registered version, validating the rows first."""

    try:
        name, version_ref = split_ref(ref)
        rows = read_rows(input_path).to_dict(orient="records")
        with _registry() as registry:
            version = registry.store.resolve(name, version_ref)
            model = load_version_locally(registry, version)
        result = model.predict_records(rows)
    except MedserveError as exc:
        raise _fail(exc) from exc
    predictions = [{"row": i, **p} for i, p in enumerate(result["predictions"])]
    if as_json or output is PredictOutput.json:
        print_json({**result, "predictions": predictions})
        return
    table = Table(title=f"{name} v{version.version} ({input_path.name})")
    table.add_column("row", justify="right")
    columns: list[tuple[str, str, str | None]] = []  # (header, key, sub-key)
    for key, value in (result["predictions"][0] if result["predictions"] else {}).items():
        if isinstance(value, dict):
            label = "P({})" if key == "probabilities" else f"{key} {{}}"
            columns += [(label.format(sub), key, str(sub)) for sub in value]
        else:
            columns.append((key, key, None))
    for header, _, _ in columns:
        table.add_column(header, overflow="fold")
    for pred in predictions:
        cells = [_fmt(pred[k][s] if s is not None else pred.get(k)) for _, k, s in columns]
        table.add_row(str(pred["row"]), *cells)
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
    grpc_port: Annotated[
        int | None,
        typer.Option(
            help="Also serve the Open Inference Protocol v2 over gRPC on this port (same host, "
            "TLS, credentials); default off. See docs/grpc.md."
        ),
    ] = None,
    log_format: Annotated[
        LogFormat | None, typer.Option(help="Access-log lines: text (default) or json.")
    ] = None,
    access_log: Annotated[
        bool | None,
        typer.Option(
            "--access-log/--no-access-log", help="One line per request on stderr (default on)."
        ),
    ] = None,
    backend: Annotated[
        ServeBackend,
        typer.Option(help="uvicorn (one machine, default) or ray (Ray Serve; docs/scale-out.md)."),
    ] = ServeBackend.uvicorn,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray backend: an existing cluster (auto, ray://...); default: local."),
    ] = None,
    ray_replicas: Annotated[
        int | None, typer.Option(help="Ray backend: ingress replicas (default 1).")
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
        "grpc_port": grpc_port,
        "log_format": log_format.value if log_format is not None else None,
        "access_log": access_log,
    }
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    try:
        if backend is ServeBackend.ray:
            # lazy import (the Ray backend only; Ray itself is imported when it starts)
            from medserve.serving.backends.ray import RayOptions, run_ray  # noqa: PLC0415

            ray_options = RayOptions()
            ray_update = {"address": ray_address, "replicas": ray_replicas}
            ray_options = ray_options.model_copy(
                update={k: v for k, v in ray_update.items() if v is not None}
            )
            run_ray(settings, APP_FACTORY, ray_options)
            return
        run_server(settings, APP_FACTORY)
    except MedserveError as exc:
        raise _fail(exc) from exc


@app.command()
def demo(
    serve_models: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve on 127.0.0.1 after registering.")
    ] = True,
    port: Annotated[
        int | None, typer.Option(help="Port (default $MEDSERVE_PORT, else 8000).")
    ] = None,
    drift: Annotated[
        bool, typer.Option(help="Play a drift scenario: shifted stream, alert, report.")
    ] = False,
    grpc_port: Annotated[
        int | None,
        typer.Option(help="Also serve the v2 gRPC endpoint on this port (`make demo`: 8081)."),
    ] = None,
) -> None:
    """Train the demo models on scikit-learn's bundled data, register them, and serve them."""
    # lazy import (the demo trains models (scikit-learn))
    from medserve.faces.demo import run_demo  # noqa: PLC0415

    # The demo alone runs open (loopback only; the server refuses any other host without auth).
    os.environ["MEDSERVE_SECURITY"] = "false"
    if grpc_port is not None:  # its server reads the port from the environment (docs/grpc.md)
        os.environ["MEDSERVE_GRPC_PORT"] = str(grpc_port)
    try:
        settings = Settings()
        port = port or settings.port
        if serve_models:  # before minutes of training, not after
            from medserve.serving.server import check_port_free  # noqa: PLC0415 (lazy: uvicorn)

            check_port_free(settings.host, port)
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
        register_llm_models,
        register_traffic,
    ):
        register(app, models_app)
    for extension in extensions():
        for group in extension.cli_groups():
            app.add_typer(group)


_register_groups()

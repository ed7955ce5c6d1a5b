"""CLI commands of this package, registered on the main ``medserve`` app: ``medserve monitor``."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from medserve.core.audit import AuditLog, load_audit_keys
from medserve.core.errors import InvalidRequestError, MedserveError
from medserve.core.monitoring_config import ModelMonitoringConfig, MonitoringSettings
from medserve.core.prediction_log import EPOCH
from medserve.core.registry.service import Registry, current_user
from medserve.core.registry.signature import Signature
from medserve.core.store.monitoring import LoggedPrediction, MonitoringStore
from medserve.faces.cli.support import fail as _fail
from medserve.faces.cli.support import open_registry as _registry
from medserve.faces.cli.support import parse_since, print_json

console = Console()


def register(app: typer.Typer, models_app: typer.Typer) -> None:

    monitor = typer.Typer(help="Prediction log, drift, live performance and alerts.")
    app.add_typer(monitor, name="monitor")

    @monitor.command("run")
    def run(
        name: str = typer.Argument(None, help="Model name; all models with an alias if omitted."),
        window: float = typer.Option(None, help="Window length in seconds (default: settings)."),
        as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    ) -> None:
        """Compute drift and live performance, store the run, evaluate alert rules."""
        from medserve.features.monitoring.report import drift_table  # noqa: PLC0415 (pulls pandas)
        from medserve.features.monitoring.runner import run_model  # noqa: PLC0415 (pulls pandas)

        window_s = window or MonitoringSettings().window_s
        try:
            with _registry() as registry:
                store = MonitoringStore(registry.store)
                names = [name] if name else sorted({m for m, _, _ in registry.store.all_aliases()})
                results = []
                for model in names:
                    result = run_model(store, registry.store, model, window_s=window_s)
                    results.append(result)
                    if as_json:
                        continue
                    console.print(drift_table(result))
                    for alert_id in result["alerts_fired"]:
                        console.print(f"[bold red]alert {alert_id} fired[/] for {model}")
        except MedserveError as exc:
            raise _fail(exc) from exc
        if as_json:
            print_json({"runs": results})

    @monitor.command("report")
    def report(
        name: str,
        html: Path = typer.Option(None, help="Also write an HTML report with plots here."),
    ) -> None:
        """Show the latest run (drift, live performance, alerts); optionally as HTML."""
        # lazy import (pulls pandas)
        from medserve.features.monitoring.report import drift_table, html_report, performance_table  # noqa: PLC0415

        try:
            with _registry() as registry:
                registry.store.get_model(name)
                store = MonitoringStore(registry.store)
                runs = store.runs(name)
                alerts = store.alerts(name)
                cfg = store.config(name)
        except MedserveError as exc:
            raise _fail(exc) from exc
        if not runs:
            console.print(f"no monitoring run for {name} yet: medserve monitor run {name}")
        else:
            console.print(drift_table(runs[0]))
            console.print(performance_table(runs[0]))
        console.print(alerts_table(alerts))
        if html is not None:
            html.write_text(html_report(name, runs, alerts, cfg.psi_alert))
            console.print(f"HTML report written to {html}")

    @monitor.command("config")
    def config(
        name: str,
        set_: list[str] = typer.Option([], "--set", help="key=value, e.g. psi_alert=0.2"),
    ) -> None:
        """Show or change a model's monitoring configuration."""

        try:
            with _registry() as registry:
                registry.store.get_model(name)
                store = MonitoringStore(registry.store)
                current = store.config(name).model_dump()
                for item in set_:
                    key, sep, value = item.partition("=")
                    if not sep or key not in current:
                        raise InvalidRequestError(
                            f"unknown setting {key!r}: use one of {list(current)}"
                        )
                    current[key] = (
                        [v for v in value.split(",") if v]
                        if key == "subgroups"
                        else (value or None)
                    )
                cfg = ModelMonitoringConfig.model_validate(current)
                if set_:
                    store.set_config(name, cfg, current_user())
        except MedserveError as exc:
            raise _fail(exc) from exc
        except ValidationError as exc:  # name the setting and the rule, not pydantic's title
            raise _fail(InvalidRequestError(_settings_problem(exc))) from exc
        except ValueError as exc:
            raise _fail(InvalidRequestError(str(exc).splitlines()[0])) from exc
        for key, value in cfg.model_dump().items():
            console.print(f"{key} = {value}")

    @monitor.command("purge")
    def purge(
        name: str = typer.Argument(
            None, help="Model name; every model with logged predictions if omitted."
        ),
    ) -> None:
        """Purge prediction-log rows (inputs, outputs, outcomes) older than each model's
        retention_days, now (the monitoring schedule does it on every run). Audited."""
        from medserve.features.monitoring.retention import purge_expired  # noqa: PLC0415

        try:
            with _registry() as registry:
                store = MonitoringStore(registry.store)
                if name:
                    registry.store.get_model(name)
                names = [name] if name else store.logged_models()
                for model in names:
                    done = purge_expired(store, model, actor=current_user())
                    if done is None:
                        console.print(f"{model}: no retention_days set; nothing purged")
                    else:
                        console.print(f"{model}: purged {done.reason()}")
        except MedserveError as exc:
            raise _fail(exc) from exc

    @monitor.command("rule")
    def rule(
        name: str,
        metric: str = typer.Argument(..., help="psi_max, prediction_psi, psi:FEATURE, auroc, ..."),
        op: str = typer.Argument(..., help="One of > >= < <="),
        threshold: float = typer.Argument(...),
        min_n: int = typer.Option(30, help="Fewest rows behind the metric for the rule to count."),
        consecutive: int = typer.Option(1, help="Breaching windows in a row before firing."),
    ) -> None:
        """Add an alert rule."""

        try:
            with _registry() as registry:
                registry.store.get_model(name)
                created = MonitoringStore(registry.store).add_rule(
                    name,
                    metric,
                    op,
                    threshold,
                    min_n=min_n,
                    consecutive=consecutive,
                    actor=current_user(),
                )
        except MedserveError as exc:
            raise _fail(exc) from exc
        console.print(
            f"rule {created.id}: {metric} {op} {threshold:g} (n ≥ {min_n}, {consecutive}x)"
        )

    @monitor.command("alerts")
    def alerts(
        name: str = typer.Argument(None),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """List alerts with their delivery and acknowledgement state."""

        try:
            with _registry() as registry:
                rows = MonitoringStore(registry.store).alerts(name)
        except MedserveError as exc:
            raise _fail(exc) from exc
        if as_json:
            print_json({"alerts": rows})
            return
        console.print(alerts_table(rows))

    @monitor.command("ack")
    def ack(alert_id: int, note: str = typer.Option(None)) -> None:
        """Acknowledge an alert (who and when are recorded)."""

        try:
            with _registry() as registry:
                store = MonitoringStore(registry.store)
                trail = AuditLog(store.engine, keys=load_audit_keys(registry.settings.home))
                row = store.acknowledge(alert_id, current_user(), note, audit=trail)
        except MedserveError as exc:
            raise _fail(exc) from exc
        console.print(f"alert {row['id']} acknowledged by {row['acknowledged_by']}")

    @monitor.command("export")
    def export(
        name: str = typer.Argument(
            None, help="Model name; every model with logged predictions if omitted."
        ),
        version: int = typer.Option(None, help="Only this version."),
        since: str = typer.Option(
            None, help="ISO date/time or a duration such as 7d (default: all)."
        ),
        until: str = typer.Option(None, help="ISO date/time (exclusive; default: now)."),
    ) -> None:
        """Write the prediction log as JSON lines to stdout, one prediction a line: id, model,
        version, time, the de-identified inputs by feature, outputs, outcome, patient pseudonym."""
        try:
            start = parse_since(since) if since else EPOCH
            end = parse_since(until) if until else datetime.now(UTC) + timedelta(seconds=1)
            with _registry() as registry:
                store = MonitoringStore(registry.store)
                names = [name] if name else store.logged_models()
                out = sys.stdout.buffer
                for model in names:
                    for p in store.predictions(model, start, end):
                        if version is None or p.version == version:
                            out.write(orjson.dumps(_exported(registry, p)) + b"\n")
                out.flush()
        except MedserveError as exc:
            raise _fail(exc) from exc


_FEATURES: dict[tuple[str, int], list[str]] = {}


def _exported(registry: Registry, p: LoggedPrediction) -> dict[str, Any]:
    """One line of ``monitor export``: inputs named by the version's signature (as logged:
    identifier fields pseudonymized, free text de-identified)."""
    key = (p.model_name, p.version)
    if key not in _FEATURES:
        version = registry.store.get_version(p.model_name, p.version)
        _FEATURES[key] = Signature.model_validate(version.signature).feature_names
    names = _FEATURES[key]
    inputs = p.inputs if isinstance(p.inputs, list) else list(p.inputs)
    return {
        "id": p.id,
        "model": p.model_name,
        "version": p.version,
        "at": p.at.isoformat(),
        "patient": p.patient,
        "site": p.site,
        "inputs": dict(zip(names, inputs, strict=False)),
        "outputs": p.outputs,
        "outcome": p.outcome,
        "outcome_at": p.outcome_at.isoformat() if p.outcome_at else None,
        "latency_ms": p.latency_ms,
    }


def alerts_table(rows: list[dict[str, object]]) -> Table:
    table = Table(title="alerts")
    for column in (
        "id",
        "metric",
        "value",
        "threshold",
        "n",
        "state",
        "delivery",
        "fired",
        "ack by",
    ):
        table.add_column(column)
    for a in rows:
        value = a["value"]
        table.add_row(
            str(a["id"]),
            str(a["metric"]),
            f"{value:.4g}" if isinstance(value, float) else str(value),
            str(a["threshold"]),
            str(a["n"]),
            str(a["state"]),
            str(a["delivery"]),
            str(a["fired_at"])[:19],
            str(a["acknowledged_by"] or "-"),
        )
    return table


def _settings_problem(exc: ValidationError) -> str:
    """``setting: rule`` for each refused setting (bounded: the first three)."""
    problems = [
        f"{'.'.join(str(part) for part in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    ]
    return "; ".join(problems[:3])

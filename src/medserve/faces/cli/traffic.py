"""``medserve models traffic`` (canary and shadow splits of an alias) and ``medserve models
compare`` (the versions that answered, and the shadows beside them)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Annotated

import typer
from rich.table import Table

from medserve.core.errors import InvalidRequestError, MedserveError
from medserve.core.registry.service import current_user
from medserve.core.store.traffic import TrafficStore
from medserve.faces.cli.support import console, fail, open_registry, print_json


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    @models_app.command("ray-config")
    def ray_config_cmd(
        name: str,
        version: int,
        set_json: Annotated[
            str | None,
            typer.Option(
                "--set",
                help='serving_config.ray as JSON: {"dedicated": true, "num_cpus": 2, '
                '"num_gpus": 1, "min_replicas": 1, "max_replicas": 4, '
                '"target_ongoing_requests": 2}; {} removes it.',
            ),
        ] = None,
    ) -> None:
        """Show, or with --set change, how a version is deployed on the Ray backend (its own
        deployment and resources, or the shared model pool). Takes effect at the next
        `medserve serve --backend ray`."""
        # lazy import (the Ray backend's rules; Ray itself is not imported)
        from medserve.serving.backends.ray import dedicated_options, is_heavy  # noqa: PLC0415

        try:
            with open_registry() as registry:
                current = registry.store.get_version(name, version)
                if set_json is not None:
                    try:
                        wanted = json.loads(set_json)
                    except json.JSONDecodeError as exc:
                        raise InvalidRequestError(f"--set is not JSON: {exc.msg}") from exc
                    if not isinstance(wanted, dict):
                        raise InvalidRequestError("--set must be a JSON object")
                    config = {k: v for k, v in current.serving_config.items() if k != "ray"}
                    if wanted:
                        config["ray"] = wanted
                    candidate = replace(current, serving_config=config)
                    dedicated_options(candidate)  # refuses a malformed config before storing
                    current = registry.store.update_version(
                        name, version, serving_config=config, actor=current_user()
                    )
        except (MedserveError, ValueError, TypeError) as exc:
            raise fail(exc) from exc
        print_json(
            {
                "model": name,
                "version": version,
                "ray": current.serving_config.get("ray", {}),
                "deployment": "own" if is_heavy(current) else "model pool",
            }
        )

    @models_app.command("traffic")
    def traffic(
        name: str,
        alias: Annotated[str, typer.Argument(help="The alias whose traffic is split.")] = (
            "production"
        ),
        split: Annotated[
            str | None,
            typer.Option(
                help="Percent per version, adding up to 100: 3:90,4:10 (the largest share "
                "becomes the alias's own version; 4:100 promotes, 3:100 ends a canary)."
            ),
        ] = None,
        shadow: Annotated[
            list[int] | None,
            typer.Option(help="A version that gets a copy of every request (repeatable)."),
        ] = None,
        reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")] = "",
        override_approver: Annotated[
            str | None,
            typer.Option(help="Split production despite gate problems: the approver's name."),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Show, or with --split/--shadow change, how an alias's traffic is shared.

        Every version that would answer production passes the promotion gate first; each
        change is audited and followed by every server on its next registry poll."""
        # lazy import (the gate pulls the evaluation report (matplotlib))
        from medserve.features.governance.traffic import (  # noqa: PLC0415
            parse_split,
            set_traffic,
        )

        try:
            with open_registry() as registry:
                if split is None and shadow is None:
                    view = TrafficStore(registry.store).policy(name, alias).to_dict()
                    gate = None
                else:
                    store = TrafficStore(registry.store)
                    weights = (
                        parse_split(split)
                        if split is not None
                        else store.policy(name, alias).weights()
                    )
                    done = set_traffic(
                        registry,
                        name,
                        alias,
                        weights,
                        shadow or [],
                        actor=current_user(),
                        reason=reason,
                        override_approver=override_approver,
                    )
                    view, gate = done.policy.to_dict(), done.gate
        except MedserveError as exc:
            raise fail(exc) from exc
        if as_json:
            print_json({**view, "gate": gate} if gate else view)
            return
        parts = ", ".join(f"v{v} {w}%" for v, w in view["split"].items())
        console.print(f"{name} {alias} -> v{view['version']}: {parts}", highlight=False)
        if view["shadow"]:
            console.print(f"shadow: {', '.join(f'v{v}' for v in view['shadow'])}")
        if gate:
            console.print(f"gate: {gate}", highlight=False)

    @models_app.command("compare")
    def compare_cmd(
        name: str,
        alias: Annotated[str, typer.Option(help="The alias whose split is shown.")] = (
            "production"
        ),
        hours: Annotated[float, typer.Option(help="Look back this many hours.")] = 24.0,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Compare the versions that answered (volume, latency, performance once outcomes
        arrive) and the shadows beside the live version (agreement, latency, failures)."""
        # lazy import (the gate pulls the evaluation report (matplotlib))
        from medserve.features.governance.traffic import compare  # noqa: PLC0415

        try:
            with open_registry() as registry:
                result = compare(registry, name, alias, hours)
        except MedserveError as exc:
            raise fail(exc) from exc
        if as_json:
            print_json(result)
            return
        table = Table(title=f"{name}: versions that answered (last {hours:g} h)")
        for column in ("version", "predictions", "share", "mean ms", "p95 ms", "labelled", "perf"):
            table.add_column(column, justify="right")
        for v in result["versions"]:
            perf = "-" if v["performance"] is None else f"{v['performance']:.4f}"
            table.add_row(
                str(v["version"]),
                str(v["predictions"]),
                f"{100 * v['share']:.1f}%",
                _ms(v["latency"]["mean_ms"]),
                _ms(v["latency"]["p95_ms"]),
                str(v["labelled"]),
                perf,
            )
        console.print(table)
        if result["shadows"]:
            shadows = Table(title="shadows (outputs logged, never returned)")
            for column in ("version", "requests", "failed", "agreement", "live ms", "shadow ms"):
                shadows.add_column(column, justify="right")
            for s in result["shadows"]:
                agreement = "-" if s["agreement"] is None else f"{100 * s['agreement']:.1f}%"
                shadows.add_row(
                    str(s["version"]),
                    str(s["requests"]),
                    str(s["failed"]),
                    agreement,
                    _ms(s["live_latency"]["mean_ms"]),
                    _ms(s["shadow_latency"]["mean_ms"]),
                )
            console.print(shadows)

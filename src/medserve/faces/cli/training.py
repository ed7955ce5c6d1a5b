"""CLI: ``medserve train``, ``medserve evaluate``, ``medserve models card|report|gate``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from medserve.core.errors import InvalidRequestError, MedserveError, NotFoundError
from medserve.core.registry.service import current_user, sample_from_file
from medserve.core.store.governance import GovernanceStore
from medserve.faces.cli.support import fail as _fail
from medserve.faces.cli.support import open_registry as _registry
from medserve.faces.cli.support import split_ref

console = Console()


def _print_evaluation(result: dict[str, object], title: str) -> None:
    from medserve.core.evaluation.report import _fmt  # noqa: PLC0415 (pulls matplotlib)

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value (95% CI)")
    metrics = result["metrics"]
    assert isinstance(metrics, dict)
    for key, entry in metrics.items():
        table.add_row(key, _fmt(entry))
    console.print(table)
    subgroups = result.get("subgroups") or {}
    assert isinstance(subgroups, dict)
    for column, rows in subgroups.items():
        sub = Table(title=f"subgroup {column}")
        for name in ("level", "n", "headline", "note"):
            sub.add_column(name)
        headline = next(iter(metrics))
        for row in rows:
            value = "-" if row["flagged"] else _fmt(row["metrics"].get(headline))
            sub.add_row(row["level"], str(row["n"]), f"{headline} {value}", row.get("reason", ""))
        console.print(sub)


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    @app.command()
    def train(
        spec_path: Annotated[Path, typer.Argument(metavar="SPEC.yaml", help="Training spec.")],
    ) -> None:
        """Train from a spec: grouped split, CV, fit, evaluate, register with a draft card."""
        # lazy import (pulls scikit-learn)
        from medserve.features.training.pipeline import train as run_training  # noqa: PLC0415
        from medserve.features.training.spec import load_spec  # noqa: PLC0415 (pulls scikit-learn)

        try:
            spec, text, base = load_spec(spec_path)
            with _registry() as registry:
                result = run_training(spec, registry, base=base, spec_text=text, console=console)
        except MedserveError as exc:
            raise _fail(exc) from exc
        cv = Table(title=f"cross-validation ({result.record['cv']['metric']})")
        for column in ("algorithm", "mean", "sd", "folds"):
            cv.add_column(column)
        for row in result.record["cv"]["results"]:
            mean = "n/a" if row["mean"] is None else f"{row['mean']:.4f}"
            sd = "n/a" if row["sd"] is None else f"{row['sd']:.4f}"
            cv.add_row(row["algorithm"], mean, sd, ", ".join(map(str, row["folds"])))
        console.print(cv)
        split = result.record["split"]
        console.print(
            f"split: {split['method']}; train {split['train_patients']} patients / "
            f"test {split['test_patients']} patients; overlap {split['patient_overlap']}"
        )
        horizon = result.record["data"].get("horizon_label")
        if horizon:
            console.print(
                f"label {horizon['label']}: {horizon['rule']}; "
                f"[yellow]{horizon['excluded_censored_before_horizon']} of "
                f"{horizon['rows_with_outcome']} patients excluded (censored before "
                f"{horizon['horizon']:g}, outcome unknown)[/]; "
                f"{horizon['events_by_horizon']} events by the horizon",
                highlight=False,
            )
        _print_evaluation(result.evaluation, "held-out test evaluation")
        for warning in result.record.get("warnings", []):
            console.print(f"[yellow]warning:[/] {warning}", highlight=False)
        v = result.version
        console.print(
            f"registered [bold]{v.model_name}[/] v{v.version} ({result.record['cv']['selected']}; "
            f"{v.runtime}). Card: medserve models card {v.model_name}@{v.version}; "
            f"report: medserve models report {v.model_name}@{v.version} --out report.html"
        )

    @app.command()
    def evaluate(
        ref: Annotated[str, typer.Argument(help="NAME[@VERSION|ALIAS]")],
        data: Annotated[Path, typer.Option(help="Labelled rows: CSV, JSON, Parquet.")],
        label: Annotated[
            str | None, typer.Option(help="Outcome column (not for survival: --time/--event).")
        ] = None,
        time: Annotated[
            str | None, typer.Option(help="Survival/horizon: follow-up time column.")
        ] = None,
        event: Annotated[
            str | None, typer.Option(help="Survival/horizon: event column (1 = event).")
        ] = None,
        horizon: Annotated[
            list[float] | None,
            typer.Option(help="Survival: horizon for AUC/Brier/calibration (repeat)."),
        ] = None,
        subgroup: Annotated[
            list[str] | None, typer.Option(help="Subgroup column (repeat).")
        ] = None,
        kind: Annotated[str, typer.Option(help="local | external | test")] = "local",
        positive: Annotated[str | None, typer.Option(help="Positive class (binary).")] = None,
        threshold: Annotated[float | None, typer.Option(help="Operating threshold.")] = None,
        min_n: int = 30,
        min_events: Annotated[
            int, typer.Option(help="Survival/binary subgroups: fewest events to report.")
        ] = 10,
        bootstrap: int = 500,
        report: Annotated[Path | None, typer.Option(help="Also write the HTML here.")] = None,
    ) -> None:
        """Evaluate a version on labelled data; stored against (version, data fingerprint).

        A survival version takes --time and --event (default: the training spec's columns)."""
        # lazy import (pulls pandas)
        from medserve.features.evaluation.run import evaluate_version  # noqa: PLC0415

        try:
            if kind not in ("local", "external", "test"):
                raise InvalidRequestError("--kind must be local, external or test")
            name, version_ref = split_ref(ref)
            frame = sample_from_file(data)
            with _registry() as registry:
                version = registry.store.resolve(name, version_ref)
                result, sha = evaluate_version(
                    registry,
                    version,
                    frame,
                    label=label,
                    dataset_name=data.name,
                    subgroups=subgroup,
                    kind=kind,
                    positive_label=positive,
                    threshold=threshold,
                    min_n=min_n,
                    n_boot=bootstrap,
                    actor=current_user(),
                    time=time,
                    event=event,
                    horizons=horizon,
                    min_events=min_events,
                )
                if report is not None and sha:
                    report.write_bytes(registry.artifacts.read_bytes(sha))
        except MedserveError as exc:
            raise _fail(exc) from exc
        _print_evaluation(result, f"{name} v{version.version} on {data.name} ({kind})")

    @models_app.command("card")
    def models_card(
        ref: Annotated[str, typer.Argument(help="NAME@VERSION|ALIAS")],
        edit: Annotated[
            Path | None, typer.Option(help="YAML with the author's statements (replaces them).")
        ] = None,
        output: Annotated[str, typer.Option(help="summary | json | html")] = "summary",
        out: Annotated[Path | None, typer.Option(help="Write json/html to this file.")] = None,
        template: Annotated[bool, typer.Option(help="Print a YAML template to fill.")] = False,
    ) -> None:
        """Show a version's model card (HTI-1 attributes, Model Cards sections), or --edit it."""

        # lazy import (pulls the evaluation report (matplotlib))
        from medserve.features.governance.cards import (  # noqa: PLC0415
            AUTHOR_TEMPLATE_KEYS,
            build_card,
            render_card_html,
        )

        if template:
            skeleton: dict[str, object] = {}
            for key in AUTHOR_TEMPLATE_KEYS:
                node = skeleton
                *parents, leaf = key.split(".")
                for part in parents:
                    node = node.setdefault(part, {})  # type: ignore[assignment]
                node[leaf] = ""
            sys.stdout.write(yaml.safe_dump(skeleton, sort_keys=True))
            return
        try:
            name, version_ref = split_ref(ref)
            with _registry() as registry:
                version = registry.store.resolve(name, version_ref)
                gov = GovernanceStore(registry.store)
                if edit is not None:
                    try:
                        statements = yaml.safe_load(edit.read_text()) or {}
                    except (OSError, yaml.YAMLError) as exc:
                        raise InvalidRequestError(f"cannot read {edit}: {exc}") from exc
                    if not isinstance(statements, dict):
                        raise InvalidRequestError("the card file must be a YAML mapping")
                    criteria = statements.pop("acceptance", None)
                    gov.save_card(name, version.version, statements, current_user())
                    if criteria is not None:
                        gov.save_criteria(name, version.version, list(criteria), current_user())
                card = build_card(gov, version)
        except MedserveError as exc:
            raise _fail(exc) from exc
        if output in ("json", "html"):
            text = (
                json.dumps(card, indent=1, default=str)
                if output == "json"
                else render_card_html(card)
            )
            if out:
                out.write_text(text)
                console.print(f"wrote {out}")
            else:
                sys.stdout.write(text + "\n")
            return
        status = "[green]complete[/]" if card["complete"] else "[red]incomplete[/]"
        console.print(f"[bold]{name}[/] v{version.version} model card: {status}")
        table = Table(title="HTI-1 source attributes")
        for column in ("attribute", "source", "value"):
            table.add_column(column, overflow="fold")
        for attr in card["hti1_source_attributes"].values():
            value = attr["value"] if attr["filled"] else "[red]MISSING[/]"
            table.add_row(attr["label"], attr["source"], str(value)[:300])
        console.print(table)
        for item in card["missing"]:
            console.print(f"[red]missing:[/] {item}", highlight=False)
        for item in card["problems"]:
            console.print(f"[red]problem:[/] {item}", highlight=False)

    @models_app.command("report")
    def models_report(
        ref: Annotated[str, typer.Argument(help="NAME@VERSION|ALIAS")],
        out: Annotated[Path, typer.Option(help="Where to write the HTML report.")] = Path(
            "report.html"
        ),
    ) -> None:
        """Write the HTML report of a version's most recent evaluation."""

        try:
            name, version_ref = split_ref(ref)
            with _registry() as registry:
                version = registry.store.resolve(name, version_ref)
                evaluations = GovernanceStore(registry.store).evaluations(name, version.version)
                sha = next((e["report_sha256"] for e in evaluations if e["report_sha256"]), None)
                if sha is None:
                    raise NotFoundError(f"{name} v{version.version} has no evaluation report")
                out.write_bytes(registry.artifacts.read_bytes(sha))
        except MedserveError as exc:
            raise _fail(exc) from exc
        console.print(f"wrote {out}")

    @models_app.command("gate")
    def models_gate(ref: Annotated[str, typer.Argument(help="NAME@VERSION|ALIAS")]) -> None:
        """Check whether a version may be promoted to production (exit 1 if not)."""
        # lazy import (pulls the evaluation report (matplotlib))
        from medserve.features.governance.gate import check  # noqa: PLC0415

        try:
            name, version_ref = split_ref(ref)
            with _registry() as registry:
                version = registry.store.resolve(name, version_ref)
                result = check(registry, name, version.version)
        except MedserveError as exc:
            raise _fail(exc) from exc
        if result.passed:
            console.print(f"[green]{name} v{version.version} passes the promotion gate[/]")
            return
        console.print(f"[red]{name} v{version.version} is blocked:[/]")
        for problem in result.problems:
            console.print(f"  - {problem}", highlight=False)
        raise typer.Exit(code=1)

"""CLI: ``medserve train``, ``medserve evaluate``, ``medserve models card|report|gate``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from medserve.core.errors import InvalidRequestError, MedserveError, NotFoundError
from medserve.core.registry.service import current_user
from medserve.core.store.governance import GovernanceStore
from medserve.faces.cli.support import fail as _fail
from medserve.faces.cli.support import open_registry as _registry
from medserve.faces.cli.support import print_json, read_rows, split_ref

console = Console()
CARD_OUTPUTS = ("summary", "json", "html")


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


def _declares(path: Path, key: str) -> bool:
    """Whether a spec file has the top-level ``key`` (``series``: a trajectory spec;
    ``time_varying``: a time-varying Cox spec); unreadable files are left to the ordinary spec
    loader, which says why."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and key in raw


def _print_trained_json(result: Any) -> None:
    """``medserve train --json``'s one shape for every spec kind (a tabular, trajectory or
    time-varying result: each has ``version``, ``record`` and ``evaluation``)."""
    v = result.version
    print_json(
        {
            "model": v.model_name,
            "version": v.version,
            "runtime": v.runtime,
            "training": result.record,
            "evaluation": result.evaluation,
        }
    )


def _train_time_varying(spec_path: Path, as_json: bool) -> None:
    """``medserve train`` on a time-varying Cox spec: fit, landmark evaluation, register."""
    # lazy import (pulls lifelines and scikit-learn)
    from medserve.features.training.time_varying import (  # noqa: PLC0415
        load_time_varying_spec,
        train_time_varying_spec,
    )

    try:
        spec, base = load_time_varying_spec(spec_path)
        with _registry() as registry:
            result = train_time_varying_spec(spec, registry, base)
    except MedserveError as exc:
        raise _fail(exc) from exc
    v = result.version
    if as_json:
        _print_trained_json(result)
        return
    table = Table(title=f"landmark evaluation (horizon {spec.time_varying.horizon:g})")
    for column in ("landmark", "at risk", "events", "concordance", "AUC", "Brier"):
        table.add_column(column)
    for row in result.evaluation["landmarks"]:
        table.add_row(
            *(
                "n/a" if row.get(k) is None else f"{row[k]:g}"
                for k in ("landmark", "at_risk", "events_in_window", "concordance", "auc", "brier")
            )
        )
    console.print(table)
    console.print(f"method: {result.evaluation['method']}", highlight=False)
    console.print(f"registered [bold]{v.model_name}[/] v{v.version} ({v.runtime})")


def _evaluate_cases(
    ref: str,
    cases: Path,
    schema: Path | None,
    kind: str,
    max_tokens: int,
    constrained: bool,
    min_n: int,
    bootstrap: int,
    split_declared: str | None,
) -> None:
    """``evaluate NAME@V --cases FILE``: a generative model on cases (features/llm/evaluation)."""
    # lazy import (the de-identifier and llama.cpp load only for this)
    from medserve.features.llm.evaluation import evaluate_generative  # noqa: PLC0415

    try:
        if kind not in ("local", "external", "test"):
            raise InvalidRequestError(f"--kind {kind!r} is not one of: local, external, test")
        shared = None
        if schema is not None:
            try:
                shared = json.loads(schema.read_text())
            except (OSError, ValueError) as exc:
                raise InvalidRequestError(f"cannot read the schema {schema}: {exc}") from exc
        name, version_ref = split_ref(ref)
        with console.status("running the cases..."), _registry() as registry:
            version = registry.store.resolve(name, version_ref)
            result = evaluate_generative(
                registry,
                version,
                cases,
                kind=kind,
                schema=shared,
                max_tokens=max_tokens,
                constrained=constrained,
                min_n=min_n,
                n_boot=bootstrap,
                actor=current_user(),
                split_declared=split_declared,
            )
    except MedserveError as exc:
        raise _fail(exc) from exc
    shown = {k: v for k, v in result.items() if k != "subgroups"}
    _print_evaluation(shown, f"{name} v{version.version} on {cases.name} ({kind})")
    counts = result["counts"]
    console.print(
        f"{counts['cases']} cases, {counts['errors']} failed, {counts['prompts_redacted']} "
        f"prompts redacted; stored against the cases' sha256 {result['dataset']['sha256'][:12]}",
        highlight=False,
    )
    for error in result.get("errors", []):
        console.print(f"[yellow]error:[/] {error}", highlight=False, markup=False)


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    @app.command()
    def train(
        spec_path: Annotated[Path, typer.Argument(metavar="SPEC.yaml", help="Training spec.")],
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the result as JSON (progress on stderr).")
        ] = False,
    ) -> None:
        """Train from a spec: grouped split, CV, fit, evaluate, register with a draft card."""
        # lazy import (pulls scikit-learn)
        from medserve.features.training.pipeline import train as run_training  # noqa: PLC0415
        from medserve.features.training.spec import load_spec  # noqa: PLC0415 (pulls scikit-learn)

        if _declares(spec_path, "time_varying"):  # docs/trajectories.md
            _train_time_varying(spec_path, as_json)
            return
        try:
            if _declares(spec_path, "series"):  # a trajectory spec (docs/trajectories.md)
                # lazy import (pulls scikit-learn)
                from medserve.features.training.trajectories import (  # noqa: PLC0415
                    load_trajectory_spec,
                    train_trajectories,
                )

                trajectory_spec, text, base = load_trajectory_spec(spec_path)
                with _registry() as registry:
                    result, _ = train_trajectories(
                        trajectory_spec, registry, base=base, spec_text=text
                    )
            else:
                spec, text, base = load_spec(spec_path)
                with _registry() as registry:
                    progress = Console(stderr=True) if as_json else console
                    result = run_training(
                        spec, registry, base=base, spec_text=text, console=progress
                    )
        except MedserveError as exc:
            raise _fail(exc) from exc
        if as_json:
            _print_trained_json(result)
            return
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
        data: Annotated[
            Path | None, typer.Option(help="Labelled rows: CSV, JSON, Parquet.")
        ] = None,
        cases: Annotated[
            Path | None,
            typer.Option(
                help="Generative models: cases (JSONL: prompt, and expected fields, a reference "
                "or a schema); see docs/llm-evaluation.md."
            ),
        ] = None,
        schema: Annotated[
            Path | None, typer.Option(help="With --cases: a JSON schema for every case.")
        ] = None,
        max_tokens: Annotated[int, typer.Option(help="With --cases: tokens per answer.")] = 256,
        constrained: Annotated[
            bool,
            typer.Option(help="With --cases: constrain answers by their schema (a grammar)."),
        ] = True,
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
        min_n: Annotated[
            int | None,
            typer.Option(
                help="Fewest rows (cases) a subgroup needs to be reported (30; 10 with --cases)."
            ),
        ] = None,
        min_events: Annotated[
            int, typer.Option(help="Survival/binary subgroups: fewest events to report.")
        ] = 10,
        bootstrap: int = 500,
        report: Annotated[Path | None, typer.Option(help="Also write the HTML here.")] = None,
        split_declared: Annotated[
            str | None,
            typer.Option(
                help="--kind test: where the test data come from, e.g. 'held-out site B, "
                "2025' (a model trained outside medserve has no recorded split)."
            ),
        ] = None,
        patient_id: Annotated[
            str | None,
            typer.Option(help="--kind test: patient-id column, checked against --train-data."),
        ] = None,
        train_data: Annotated[
            Path | None,
            typer.Option(help="--kind test: the training rows (only their patient ids are read)."),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Evaluate a version on labelled data; stored against (version, data fingerprint).

        A survival version takes --time and --event (default: the training spec's columns).
        For a model trained elsewhere, --kind test with --split-declared (and --patient-id with
        --train-data) records the test set's provenance, which the promotion gate needs.
        A generative model takes --cases instead of --data (docs/llm-evaluation.md)."""
        if cases is not None:
            _evaluate_cases(
                ref,
                cases,
                schema,
                kind,
                max_tokens,
                constrained,
                10 if min_n is None else min_n,
                bootstrap,
                split_declared,
            )
            return
        # lazy import (pulls pandas)
        from medserve.features.evaluation.provenance import declared_test_split  # noqa: PLC0415
        from medserve.features.evaluation.run import evaluate_version  # noqa: PLC0415

        try:
            if kind not in ("local", "external", "test"):
                raise InvalidRequestError(f"--kind {kind!r} is not one of: local, external, test")
            if data is None:
                raise InvalidRequestError("give --data (labelled rows), or --cases (generative)")
            name, version_ref = split_ref(ref)
            frame = read_rows(data)
            if kind != "test" and (split_declared or patient_id or train_data):
                raise InvalidRequestError(
                    "--split-declared, --patient-id and --train-data describe a test set: "
                    "add --kind test"
                )
            split = declared_test_split(
                frame,
                declared=split_declared,
                patient_id=patient_id,
                train=read_rows(train_data) if train_data is not None else None,
                train_name=train_data.name if train_data is not None else None,
            )
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
                    min_n=30 if min_n is None else min_n,
                    n_boot=bootstrap,
                    actor=current_user(),
                    time=time,
                    event=event,
                    horizons=horizon,
                    min_events=min_events,
                    split=split,
                )
                if report is not None and sha:
                    report.write_bytes(registry.artifacts.read_bytes(sha))
        except MedserveError as exc:
            raise _fail(exc) from exc
        if as_json:
            print_json({"model": name, "version": version.version, **result})
            return
        _print_evaluation(result, f"{name} v{version.version} on {data.name} ({kind})")
        if split is not None:
            overlap = split.get("patient_overlap")
            checked = "" if overlap is None else f"; {overlap} patients also in the training data"
            console.print(f"test set: {split['declared']}{checked}", highlight=False)

    @models_app.command("card")
    def models_card(
        ref: Annotated[str, typer.Argument(help="NAME@VERSION|ALIAS")],
        edit: Annotated[
            Path | None, typer.Option(help="YAML with the author's statements (replaces them).")
        ] = None,
        output: Annotated[str, typer.Option(help="summary | json | html")] = "summary",
        out: Annotated[Path | None, typer.Option(help="Write json/html to this file.")] = None,
        template: Annotated[
            bool,
            typer.Option(
                help="Print (or --out) a commented YAML of every author statement and the "
                "acceptance: block, to fill in and store with --edit."
            ),
        ] = False,
    ) -> None:
        """Show a version's model card (HTI-1 attributes, Model Cards sections), or --edit it."""

        # lazy import (pulls the evaluation report (matplotlib))
        from medserve.features.governance.card_template import card_template  # noqa: PLC0415
        from medserve.features.governance.cards import (  # noqa: PLC0415
            build_card,
            render_card_html,
            test_evaluation,
        )

        if output not in CARD_OUTPUTS:
            valid = ", ".join(CARD_OUTPUTS)
            raise _fail(InvalidRequestError(f"--output {output!r} is not one of: {valid}"))
        if template:
            text = card_template()
            if out is not None:
                out.write_text(text)
                console.print(f"wrote {out}")
            else:
                sys.stdout.write(text)
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
                evaluation = test_evaluation(gov, version)  # the HTML's tables and plots
        except MedserveError as exc:
            raise _fail(exc) from exc
        if output in ("json", "html"):
            text = (
                json.dumps(card, indent=1, default=str)
                if output == "json"
                else render_card_html(card, evaluation)
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
    def models_gate(
        ref: Annotated[str, typer.Argument(help="NAME@VERSION|ALIAS")],
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Check whether a version may be promoted to production (exit 1 if not): every problem,
        each with the command that fixes it."""
        # lazy import (pulls the evaluation report (matplotlib))
        from medserve.features.governance.gate import check  # noqa: PLC0415

        try:
            name, version_ref = split_ref(ref)
            with _registry() as registry:
                version = registry.store.resolve(name, version_ref)
                result = check(registry, name, version.version)
        except MedserveError as exc:
            raise _fail(exc) from exc
        if as_json:
            print_json(
                {
                    "model": name,
                    "version": version.version,
                    "passed": result.passed,
                    "problems": [
                        {"message": p, "fix": f}
                        for p, f in zip(result.problems, result.fixes, strict=True)
                    ],
                }
            )
        elif result.passed:
            console.print(f"[green]{name} v{version.version} passes the promotion gate[/]")
        else:
            console.print(
                f"[red]{name} v{version.version} is blocked by {len(result.problems)} problems:[/]"
            )
            numbers: dict[str, int] = {}
            for problem, fix in zip(result.problems, result.fixes, strict=True):
                number = numbers.setdefault(fix, len(numbers) + 1)
                console.print(f"  - {problem}  [fix {number}]", highlight=False, markup=False)
            console.print("to fix:")
            for fix, number in numbers.items():
                console.print(f"  [{number}] {fix}", highlight=False, markup=False)
        if not result.passed:
            raise typer.Exit(code=1)

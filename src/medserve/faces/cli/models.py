"""``medserve models ...``: register, list, show, alias (through the gate), signatures and FHIR
maps of registered models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.table import Table

from medserve.core.errors import InvalidRequestError, MedserveError
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import current_user
from medserve.core.registry.signature import Signature
from medserve.faces.cli.support import console, print_json, read_rows, split_ref
from medserve.faces.cli.support import fail as _fail
from medserve.faces.cli.support import open_registry as _registry
from medserve.features.interop.feature_map import FhirMap

models_app = typer.Typer(help="Registered models, versions and aliases.", no_args_is_help=True)


def _parse_tags(tags: list[str] | None) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in tags or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequestError(f"bad tag {item!r}: expected KEY=VALUE")
        parsed[key] = value
    return parsed


# ------------------------------------------------------------------------------------------
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
    task: Annotated[
        str | None,
        typer.Option(
            help="GGUF only: chat or embeddings (default: embeddings when the file declares "
            "a pooling type, else chat)."
        ),
    ] = None,
    max_context: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="GGUF only: this version's cap on prompt + completion tokens per call, on top "
            "of each key's max_context (serving_config.max_context).",
        ),
    ] = None,
) -> None:
    """Register a model file (.onnx, .skops, XGBoost .json/.ubj, LightGBM .txt, MLflow dir,
    or a .gguf language model)."""
    # lazy import (the GGUF magic check; the llm feature's heavy parts stay unimported)
    from medserve.features.llm.gguf_metadata import is_gguf  # noqa: PLC0415

    if path.suffix.lower() == ".gguf" or is_gguf(path):
        _register_gguf(
            name,
            path,
            alias=alias,
            description=description,
            tags=tag,
            task=task,
            serving_config={"max_context": max_context} if max_context else None,
        )
        return
    if task is not None or max_context is not None:
        raise _fail(InvalidRequestError("--task and --max-context apply to GGUF files only"))
    try:
        with console.status("registering..."), _registry() as registry:
            frame = read_rows(sample) if sample else None
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


def _register_gguf(
    name: str,
    path: Path,
    *,
    alias: str | None,
    description: str,
    tags: list[str] | None,
    task: str | None = None,
    serving_config: dict[str, int] | None = None,
) -> None:
    """A GGUF language model: its metadata is read with the ``gguf`` package and stored on the
    version; an alias is moved through the promotion gate like any other (production needs a
    complete card, or an override: ``medserve models alias NAME production V --override-...``)."""
    # lazy import (optional extra: llm)
    from medserve.features.governance.gate import set_alias_gated  # noqa: PLC0415
    from medserve.features.llm.register import register_gguf  # noqa: PLC0415 (extra: llm)

    try:
        with console.status("registering (sha256 and GGUF metadata)..."), _registry() as registry:
            version = register_gguf(
                registry,
                name,
                path,
                description=description,
                tags=_parse_tags(tags),
                task=task,  # type: ignore[arg-type]  # checked by register_gguf
                serving_config=dict(serving_config or {}),
            )
    except MedserveError as exc:
        raise _fail(exc) from exc
    info = version.serving_config.get("gguf", {})
    what = (
        f"embeddings, {version.tags.get('dimensions')} dimensions"
        if version.serving_config.get("task") == "embeddings"
        else f"chat template {'yes' if info.get('chat_template') else 'no'}"
    )
    console.print(
        f"registered [bold]{name}[/] version [bold]{version.version}[/] "
        f"(runtime {version.runtime}; {info.get('architecture')}, "
        f"{info.get('quantization')}, context {info.get('context_length')} tokens, {what})",
        highlight=False,
    )
    if not alias:
        return
    try:
        with _registry() as registry:
            set_alias_gated(registry, name, alias, version.version, actor=current_user())
    except MedserveError as exc:
        raise _fail(exc) from exc
    console.print(f"alias [green]{alias}[/] → v{version.version}")


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
                sample=read_rows(sample) if sample else None,
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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List registered models with their latest version and aliases."""
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
    if as_json:
        print_json(
            {
                "models": [
                    {
                        "name": model.name,
                        "latest_version": latest_version,
                        "aliases": aliases,
                        "description": model.description,
                        "updated_at": model.updated_at.isoformat(),
                    }
                    for model, aliases, latest_version in rows
                ],
                "next_page_token": page.next_page_token,
            }
        )
        return
    # Fits 80 columns: name and version never shrink; aliases wrap; the description (a
    # secondary column) only shows on wider terminals.
    wide = console.width >= 110
    table = Table(title="Registered models")
    table.add_column("name", no_wrap=True, min_width=8)
    table.add_column("latest", justify="right", no_wrap=True, min_width=6)
    table.add_column("aliases", min_width=12, overflow="fold")
    if wide:
        table.add_column("description", max_width=40, overflow="ellipsis", no_wrap=True)
    table.add_column("updated", no_wrap=True, min_width=16)
    for model, aliases, latest_version in rows:
        alias_text = ", ".join(f"{a} → v{v}" for a, v in sorted(aliases.items())) or "-"
        cells = [model.name, str(latest_version or "-"), alias_text]
        if wide:
            cells.append(model.description)
        table.add_row(*cells, model.updated_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)
    if page.next_page_token:
        console.print(f"more: --page-token {page.next_page_token}")


def _versions_table(versions: list[ModelVersion], aliases: dict[str, int]) -> Table:
    by_version: dict[int, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(number, []).append(alias)
    wide = console.width >= 110  # flavor and source are secondary: shown when they fit
    table = Table(title="Versions")
    table.add_column("version", justify="right", no_wrap=True, min_width=7)
    table.add_column("aliases", overflow="fold", min_width=10)
    table.add_column("runtime", overflow="fold", min_width=8)
    if wide:
        table.add_column("flavor")
        table.add_column("source")
    table.add_column("sha256", no_wrap=True, min_width=12)
    table.add_column("created", overflow="fold", min_width=16)
    for v in versions:
        cells = [
            str(v.version),
            ", ".join(sorted(by_version.get(v.version, []))) or "-",
            v.runtime,
        ]
        if wide:
            cells += [v.flavor, v.source_flavor]
        cells += [v.artifact_sha256[:12], f"{v.created_at:%Y-%m-%d %H:%M} by {v.created_by}"]
        table.add_row(*cells)
    return table


def _version_json(v: ModelVersion, aliases: dict[str, int]) -> dict[str, object]:
    return {
        "version": v.version,
        "aliases": sorted(a for a, n in aliases.items() if n == v.version),
        "runtime": v.runtime,
        "runtime_reason": v.runtime_reason,
        "flavor": v.flavor,
        "source_flavor": v.source_flavor,
        "sha256": v.artifact_sha256,
        "created_at": v.created_at.isoformat(),
        "created_by": v.created_by,
        "signature": v.signature,
    }


@models_app.command("versions")
def models_versions(
    name: str,
    page_size: int = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List a model's versions, newest first."""
    try:
        with _registry() as registry:
            versions = registry.store.list_versions(name, page_size=page_size).items
            aliases = registry.store.list_aliases(name)
    except MedserveError as exc:
        raise _fail(exc) from exc
    if as_json:
        print_json({"model": name, "versions": [_version_json(v, aliases) for v in versions]})
        return
    console.print(_versions_table(versions, aliases))


@models_app.command("show")
def models_show(
    ref: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
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
    if as_json:
        shown = [version] if version is not None else versions
        print_json(
            {
                "name": model.name,
                "description": model.description,
                "tags": model.tags,
                "created_at": model.created_at.isoformat(),
                "created_by": model.created_by,
                "aliases": aliases,
                "versions": [_version_json(v, aliases) for v in shown],
                "alias_history": [
                    {
                        "at": e.at.isoformat(),
                        "alias": e.alias,
                        "from_version": e.from_version,
                        "to_version": e.to_version,
                        "actor": e.actor,
                        "reason": e.reason,
                    }
                    for e in history
                ],
            }
        )
        return
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
    gguf = version.serving_config.get("gguf")
    if gguf:
        console.print(
            f"GGUF: {gguf.get('architecture')}, {gguf.get('quantization')}, context "
            f"{gguf.get('context_length')} tokens, chat template "
            f"{'yes' if gguf.get('chat_template') else 'no'}; {gguf.get('extra', {})}",
            highlight=False,
        )
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

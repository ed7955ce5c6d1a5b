"""``medserve models register-upstream``: a model version that is a route to an OpenAI-compatible
upstream (docs/llm-upstream.md). ``medserve evaluate NAME@V --cases FILE`` (generative
evaluation) lives with the other ``evaluate`` in ``training.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from medserve.core.errors import InvalidRequestError, MedserveError
from medserve.core.registry.service import current_user
from medserve.faces.cli.support import console
from medserve.faces.cli.support import fail as _fail
from medserve.faces.cli.support import open_registry as _registry


def _route_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidRequestError(f"cannot read the route file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequestError("the route file must be a YAML or JSON mapping")
    return data


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    @models_app.command("register-upstream")
    def register_upstream_command(
        name: str,
        base_url: Annotated[
            str | None,
            typer.Option(help="The upstream's OpenAI base URL, e.g. https://host/v1."),
        ] = None,
        upstream_model: Annotated[
            str | None, typer.Option(help="The model name the upstream knows.")
        ] = None,
        api_key_env: Annotated[
            str | None,
            typer.Option(
                help="Environment variable holding the upstream's key (read per call): "
                "MEDSERVE_UPSTREAM_KEY_*, or one listed in MEDSERVE_UPSTREAM_CREDENTIALS."
            ),
        ] = None,
        api_key_file: Annotated[
            str | None,
            typer.Option(
                help="File holding the upstream's key (read per call), under "
                "MEDSERVE_UPSTREAM_SECRETS_DIR (default MEDSERVE_HOME/secrets)."
            ),
        ] = None,
        timeout_s: Annotated[
            float | None, typer.Option(help="Longest wait for the upstream's next byte.")
        ] = None,
        retries: Annotated[
            int | None, typer.Option(help="Retries before the answer starts (backoff).")
        ] = None,
        context_length: Annotated[int | None, typer.Option(help="The upstream's context.")] = None,
        grammar: Annotated[
            str | None,
            typer.Option(help="'gbnf' if the upstream takes llama.cpp's grammar field."),
        ] = None,
        route: Annotated[
            Path | None,
            typer.Option(help="A route file (YAML/JSON; every field, options override it)."),
        ] = None,
        alias: Annotated[
            str | None,
            typer.Option(help="Point this alias at the new version (production: the gate)."),
        ] = None,
        description: str = "",
    ) -> None:
        """Register a version that routes calls to an OpenAI-compatible upstream (another
        medserve, vLLM, a llama.cpp server). The credential is a reference (an environment
        variable or a file), never the secret; the PHI policy, budgets and audit apply as for
        a local model, and redaction happens before anything leaves this server."""
        # lazy import (the gate pulls the evaluation report; the route needs only pydantic)
        from medserve.features.governance.gate import set_alias_gated  # noqa: PLC0415
        from medserve.features.llm.upstream_route import (  # noqa: PLC0415
            parse_route,
            register_upstream,
        )

        try:
            fields: dict[str, Any] = _route_file(route) if route else {}
            given = {
                "base_url": base_url,
                "upstream_model": upstream_model,
                "api_key_env": api_key_env,
                "api_key_file": api_key_file,
                "timeout_s": timeout_s,
                "retries": retries,
                "context_length": context_length,
                "grammar": grammar,
            }
            fields.update({k: v for k, v in given.items() if v is not None})
            parsed = parse_route(fields)
            with _registry() as registry:
                version = register_upstream(registry, name, parsed, description=description)
                if alias:
                    set_alias_gated(registry, name, alias, version.version, actor=current_user())
        except MedserveError as exc:
            raise _fail(exc) from exc
        console.print(
            f"registered [bold]{name}[/] version [bold]{version.version}[/] "
            f"({version.runtime_reason})" + (f", alias [green]{alias}[/]" if alias else ""),
            highlight=False,
        )
        console.print(json.dumps(version.serving_config.get("upstream", {})), highlight=False)

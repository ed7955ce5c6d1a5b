"""CLI commands: ``medserve keys ...``, ``medserve tenants ...``, ``medserve audit ...``."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from medserve.core.audit import AuditLog, load_audit_keys
from medserve.core.errors import MedserveError
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.unit_of_work import engine_of
from medserve.faces.cli.support import fail, parse_duration, parse_since, print_json
from medserve.features.llm.budgets import Budgets, BudgetStore, budget_path, open_budgets
from medserve.features.security.keys import SecurityStore
from medserve.features.security.permissions import ROLES

console = Console()
err_console = Console(stderr=True)

keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants: which tenant owns which model.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit trail: verify, export.", no_args_is_help=True)


@contextmanager
def _security() -> Iterator[tuple[SecurityStore, AuditLog]]:

    settings = Settings()
    registry = Registry.open(settings)
    try:
        engine = registry.store.engine  # type: ignore[attr-defined]
        audit = AuditLog(engine, keys=load_audit_keys(settings.home))
        audit.seal()
        while audit.drain_outbox():  # registry changes made since a server last drained it
            pass
        yield SecurityStore(engine), audit
        while audit.drain_outbox():  # this command's own change, into the chain now
            pass
    finally:
        registry.close()


def _fail(exc: Exception) -> typer.Exit:

    return fail(exc)


def _actor() -> str:
    """The local OS user, as the CLI's changes name their actor."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def keys_create(
    name: Annotated[str, typer.Argument(help="Who or what the key is for (e.g. 'ehr-prod').")],
    role: Annotated[list[str], typer.Option("--role", "-r", help=f"Role(s): {', '.join(ROLES)}.")],
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Limit the key to these models.")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Bind the key to one tenant.")] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime such as 90d or 12h (default: no expiry).")
    ] = None,
    rate_limit: Annotated[
        int | None, typer.Option(help="Requests per second allowed for this key.")
    ] = None,
) -> None:
    """Create an API key. The key is printed once: it is stored only as a hash."""
    try:
        with _security() as (store, _):
            issued = store.create_key(
                name,
                role,
                models=model,
                tenant=tenant,
                expires_in=parse_duration(expires_in) if expires_in else None,
                rate_limit=rate_limit,
                created_by=_actor(),
            )
    except MedserveError as exc:
        raise _fail(exc) from exc
    err_console.print(
        f"created key [bold]{issued.key.key_id}[/] ({name}); copy it now, it is not shown again:",
        highlight=False,
    )
    sys.stdout.write(issued.token + "\n")


def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List API keys (ids, roles, scope, state); secrets are never shown. The ids are whole:
    ``medserve keys revoke ID`` takes them as printed."""
    try:
        with _security() as (store, _):
            keys = store.list_keys()
    except MedserveError as exc:
        raise _fail(exc) from exc
    if as_json:
        print_json(
            {
                "keys": [
                    {
                        "id": k.key_id,
                        "name": k.name,
                        "roles": list(k.roles),
                        "models": list(k.models) if k.models else None,
                        "tenant": k.tenant,
                        "expires_at": k.expires_at.isoformat() if k.expires_at else None,
                        "state": k.state(),
                    }
                    for k in keys
                ]
            }
        )
        return
    table = Table(title="API keys")
    table.add_column("id", no_wrap=True, min_width=len(keys[0].key_id) if keys else 2)
    for column in ("name", "roles", "models", "tenant"):
        table.add_column(column, overflow="fold", min_width=5)
    table.add_column("expires", overflow="fold", min_width=10)
    table.add_column("state", no_wrap=True, min_width=7)
    for k in keys:
        table.add_row(
            k.key_id,
            k.name,
            ", ".join(k.roles),
            ", ".join(k.models) if k.models else "all",
            k.tenant or "-",
            k.expires_at.strftime("%Y-%m-%d %H:%M") if k.expires_at else "never",
            k.state(),
        )
    console.print(table)


def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (or the key).")]) -> None:
    """Revoke a key: every server worker refuses it from its next request."""
    try:
        with _security() as (store, _):
            key = store.revoke_key(key_id, actor=_actor())
    except MedserveError as exc:
        raise _fail(exc) from exc
    console.print(f"revoked key [bold]{key.key_id}[/] ({key.name})", highlight=False)


def keys_usage(
    key_id: Annotated[
        str | None, typer.Argument(help="A key id (or the key); default: every key.")
    ] = None,
    days: Annotated[int, typer.Option(min=1, max=400, help="UTC days back, today included.")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Language-model usage per key, UTC day and model (calls and tokens; /openai/v1)."""
    settings = Settings()
    key = key_id.removeprefix("msk_").split("_", 1)[0] if key_id else None
    since = (datetime.now(UTC) - timedelta(days=days - 1)).date().isoformat()
    shared = settings.shared_rate_limits and settings.resolved_store_uri.startswith("postgres")
    if shared:  # the deployment's nodes count in the registry's PostgreSQL (docs/scale-out.md)
        registry = Registry.open(settings)
        try:
            store: Budgets = open_budgets(settings.home, engine_of(registry.store), True)
            rows = store.usage(key, since)
            current = store.window(key) if key else None
        except MedserveError as exc:
            raise _fail(exc) from exc
        finally:
            registry.close()
    else:
        path = budget_path(settings.home)
        if not path.exists():
            if as_json:
                print_json({"usage": []})
                return
            console.print("no language-model calls in this home yet")
            return
        store = BudgetStore(path)
        try:
            rows = store.usage(key, since)
            current = store.window(key) if key else None
        finally:
            store.close()
    if as_json:
        print_json(
            {
                "usage": [
                    {
                        "key": r.key,
                        "day": r.day,
                        "model": r.model,
                        "calls": r.requests,
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.completion_tokens,
                    }
                    for r in rows
                ]
            }
        )
        return
    table = Table("key", "day (UTC)", "model", "calls", "prompt tokens", "completion tokens")
    for r in rows:
        table.add_row(
            r.key, r.day, r.model, str(r.requests), str(r.prompt_tokens), str(r.completion_tokens)
        )
    console.print(table)
    if current is not None:
        console.print(
            "this minute: {requests_this_minute} calls, {tokens_this_minute} tokens; today: "
            "{requests_today} calls, {tokens_today} tokens (reservations of calls in flight "
            "included)".format(**current),
            highlight=False,
        )


def tenants_assign(
    model: Annotated[str, typer.Argument(help="Model name.")],
    tenant: Annotated[str, typer.Argument(help="Tenant that owns it ('-' to clear).")],
) -> None:
    """Assign a model to a tenant: only that tenant's keys (and untenanted keys) see it."""
    try:
        with _security() as (store, _):
            store.set_model_tenant(model, None if tenant == "-" else tenant, actor=_actor())
    except MedserveError as exc:
        raise _fail(exc) from exc
    console.print(f"model [bold]{model}[/] -> tenant [bold]{tenant}[/]", highlight=False)


def tenants_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List model -> tenant assignments."""
    with _security() as (store, _):
        tenants = store.model_tenants()
    if as_json:
        print_json({"tenants": dict(sorted(tenants.items()))})
        return
    table = Table("model", "tenant")
    for model, tenant in sorted(tenants.items()):
        table.add_row(model, tenant)
    console.print(table)


def audit_verify(
    anchor: Annotated[
        Path | None,
        typer.Option(help="An anchor from `medserve audit anchor`: detects truncation and wipes."),
    ] = None,
) -> None:
    """Recompute the keyed hash chain; exit 1 and name the first broken entry if it was tampered
    with (or, with --anchor, if it was truncated or wiped since the anchor)."""
    try:
        anchored = orjson.loads(anchor.read_bytes()) if anchor is not None else None
        with _security() as (_, audit):
            result = audit.verify(anchored)
    except (OSError, orjson.JSONDecodeError) as exc:
        raise fail(exc) from exc
    except MedserveError as exc:
        raise fail(exc) from exc
    if result.ok:
        console.print(f"[green]audit trail intact[/]: {result.checked} entries verified")
        for seq, action, detail in result.gaps:  # losses recorded in the chain: not tampering
            console.print(f"[yellow]recorded loss[/] at entry {seq} ({action}): {detail}")
        return
    err_console.print(
        f"[bold red]audit trail BROKEN at entry {result.first_bad_seq}[/]: {result.reason} "
        f"({result.checked} entries verified before it)",
        highlight=False,
    )
    raise typer.Exit(code=1)


def audit_anchor(
    output: Annotated[
        Path | None, typer.Option(help="Write the anchor here (default: stdout).")
    ] = None,
) -> None:
    """The newest entry's sequence and hash, sealed with the audit key: keep it on write-once
    storage; `medserve audit verify --anchor FILE` then detects a truncated or wiped trail."""
    try:
        with _security() as (_, audit):
            anchor = orjson.dumps(audit.anchor(), option=orjson.OPT_INDENT_2)
    except MedserveError as exc:
        raise fail(exc) from exc
    if output is None:
        sys.stdout.buffer.write(anchor + b"\n")
    else:
        output.write_bytes(anchor + b"\n")
        console.print(f"anchor written to {output}")


def audit_rotate_key() -> None:
    """Add a new audit key and seal new entries with it (older entries keep naming theirs)."""
    settings = Settings()
    try:
        keys = load_audit_keys(settings.home)
        new = keys.rotate()
    except ValueError as exc:  # the keyring came from MEDSERVE_AUDIT_KEYS
        raise fail(exc) from exc
    with _security():
        pass  # seals a marker with the new key
    console.print(f"new audit key {new}; entries from now on are sealed with it")


def audit_export(
    since: Annotated[
        str | None, typer.Option(help="ISO date/time or a duration such as 7d (default: all).")
    ] = None,
) -> None:
    """Write audit entries as JSON lines to stdout (with their hashes, for offline checks)."""
    try:
        start = parse_since(since) if since else None
        with _security() as (_, audit):
            out = sys.stdout.buffer
            for row in audit.entries(since=start):
                out.write(orjson.dumps(row) + b"\n")
            out.flush()
    except MedserveError as exc:
        raise _fail(exc) from exc


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    keys_app.command("create")(keys_create)
    keys_app.command("list")(keys_list)
    keys_app.command("revoke")(keys_revoke)
    keys_app.command("usage")(keys_usage)
    tenants_app.command("assign")(tenants_assign)
    tenants_app.command("list")(tenants_list)
    audit_app.command("verify")(audit_verify)
    audit_app.command("anchor")(audit_anchor)
    audit_app.command("rotate-key")(audit_rotate_key)
    audit_app.command("export")(audit_export)
    app.add_typer(keys_app, name="keys")
    app.add_typer(tenants_app, name="tenants")
    app.add_typer(audit_app, name="audit")

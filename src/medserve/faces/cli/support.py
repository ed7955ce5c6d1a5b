"""What every CLI command group shares: the consoles, opening the registry, failing clearly,
and reading a model reference."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import typer
from rich.console import Console

from medserve.core.errors import InvalidRequestError, MedserveError
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings

console = Console()
err_console = Console(stderr=True)


@contextmanager
def open_registry() -> Iterator[Registry]:
    registry = Registry.open(Settings())
    try:
        yield registry
    finally:
        registry.close()


def fail(exc: Exception) -> typer.Exit:
    message = exc.message if isinstance(exc, MedserveError) else str(exc)
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    if isinstance(exc, MedserveError):
        for detail in exc.details[:20]:
            err_console.print(f"  - {detail.get('message', detail)}", highlight=False)
    return typer.Exit(code=1)


def split_ref(ref: str, default: str = "production") -> tuple[str, str]:
    """``name@3`` / ``name@staging`` / ``name`` (its production alias)."""
    name, _, version = ref.partition("@")
    if not name:
        raise InvalidRequestError(f"bad model reference {ref!r}: expected NAME[@VERSION|ALIAS]")
    return name, version or default


_DURATION = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise InvalidRequestError(f"duration {text!r}: use a number and m/h/d/w, e.g. 90d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_since(text: str) -> datetime:
    try:
        return datetime.now(UTC) - parse_duration(text)
    except InvalidRequestError:
        pass
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidRequestError(
            f"--since {text!r}: use an ISO date/time (2024-01-31) or a duration (7d)"
        ) from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value

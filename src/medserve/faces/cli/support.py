"""What every CLI command group shares: the consoles, opening the registry, failing clearly,
and reading a model reference."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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

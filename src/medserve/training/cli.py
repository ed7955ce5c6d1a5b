"""CLI commands of this package, registered on the main ``medserve`` app."""

from __future__ import annotations

import typer


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    return None

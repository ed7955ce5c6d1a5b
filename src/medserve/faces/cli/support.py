"""What every CLI command group shares: the consoles, opening the registry, failing clearly,
and reading a model reference."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from medserve.core.errors import InvalidRequestError, MedserveError
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

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
    """Print ``exc`` as one paragraph (every detail, none cut, each with its fix when the error
    names one) on stderr; the caller raises the returned exit (status 1)."""
    message = exc.message if isinstance(exc, MedserveError) else str(exc)
    # escaped: a message may quote a caller's text with brackets ("[NAME]", a column "[x]")
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    if not isinstance(exc, MedserveError):
        return typer.Exit(code=1)
    fixes: dict[str, int] = {}
    for detail in exc.details:
        text = str(detail.get("message", detail)) if isinstance(detail, dict) else str(detail)
        fix = detail.get("fix") if isinstance(detail, dict) else None
        if fix:
            number = fixes.setdefault(str(fix), len(fixes) + 1)
            text += f"  [fix {number}]"
        err_console.print(f"  - {text}", highlight=False, markup=False)
    if fixes:
        err_console.print("to fix:", highlight=False)
        for fix, number in fixes.items():
            err_console.print(f"  [{number}] {fix}", highlight=False, markup=False)
    return typer.Exit(code=1)


def print_json(value: Any) -> None:
    """``--json`` output: one JSON document on stdout, nothing else (pipe it to ``jq``)."""
    sys.stdout.write(json.dumps(value, default=str, indent=1) + "\n")


def read_rows(path: Path) -> pd.DataFrame:
    """Rows from a file: CSV, JSON lines, a JSON list of records, or the API's own
    ``{"instances": [...]}`` body; a clear error for a missing or unreadable file."""
    import pandas as pd  # noqa: PLC0415 (heavy: pandas, kept off the serving path)

    if not path.exists():
        raise InvalidRequestError(f"{path}: no such file (check the path given to the option)")
    if path.is_dir():
        raise InvalidRequestError(
            f"{path} is a folder: give a CSV, JSON, JSON lines or Parquet file"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        text = path.read_text()
        head = text.lstrip()[:1]
        if suffix in {".jsonl", ".ndjson"}:
            return pd.DataFrame(_json_lines(text))
        if suffix == ".json" or head in ("{", "["):
            try:
                data: Any = json.loads(text)
            except json.JSONDecodeError:
                data = _json_lines(text)  # JSON lines in a .json file
            if isinstance(data, dict) and isinstance(data.get("instances"), list):
                data = data["instances"]
            if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
                return pd.DataFrame(data)  # pandas' own to_json(): {column: {row: value}}
            if isinstance(data, dict):
                data = [data]
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise InvalidRequestError(
                    f"{path}: JSON input must be a list of rows, one row, or "
                    '{"instances": [{feature: value, ...}, ...]}'
                )
            return pd.DataFrame(data)
        return pd.read_csv(io.StringIO(text))
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise InvalidRequestError(
            f"{path}: cannot read it as CSV, JSON, JSON lines or Parquet ({exc})"
        ) from exc


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


def _json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]

"""``medserve keys usage``: a key's language-model usage from the home's budget file."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from medserve.faces.cli import app
from medserve.features.llm.budgets import BudgetStore, Limits, budget_path


def test_keys_usage_lists_calls_and_tokens_per_day_and_model(home: Path) -> None:
    runner = CliRunner()
    assert "no language-model calls" in runner.invoke(app, ["keys", "usage"]).output
    store = BudgetStore(budget_path(home))
    try:
        store.settle(store.admit("abc123def456", Limits(), 50), "scribe", 11, 29)
        store.settle(store.admit("abc123def456", Limits(), 50), "scribe", 1, 2)
    finally:
        store.close()
    result = runner.invoke(app, ["keys", "usage", "abc123def456"])
    assert result.exit_code == 0, result.output
    assert "scribe" in result.output
    # the model's row: 2 calls, 12 prompt and 31 completion tokens, each in a cell of its own
    row = next(line for line in result.output.splitlines() if "scribe" in line)
    cells = [cell.strip() for cell in row.split("│")]
    assert {"2", "12", "31"} <= set(cells), row
    assert "today: 2 calls, 43 tokens" in result.output

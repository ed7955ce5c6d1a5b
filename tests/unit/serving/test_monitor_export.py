"""``medserve monitor export``: the prediction log as JSON lines, one prediction a line, with the
ids callers were given, inputs named by feature, and never a patient identifier as sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.unit.serving.inprocess_app import MODEL, records, serve
from typer.testing import CliRunner

from medserve.core.context import stored_request_id
from medserve.core.phi import load_or_create_salt
from medserve.faces.cli import app


def test_the_log_exports_what_was_answered(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answered: list[str] = []
    with serve(home, security=False) as (client, _):
        for i in range(3):
            response = client.post(
                f"/v1/models/{MODEL}/predict",
                json={"instances": records(2)},
                headers={"X-Patient-ID": f"MRN-00{i}", "X-Request-ID": f"export-{i}"},
            )
            assert response.status_code == 200, response.text
            stored = stored_request_id(f"export-{i}", None, load_or_create_salt(home))
            answered += [f"{stored}-{row}" for row in range(2)]  # a caller's id: keyed
    # the lifespan's end drained the log
    monkeypatch.setenv("MEDSERVE_HOME", str(home))
    runner = CliRunner()
    result = runner.invoke(app, ["monitor", "export", MODEL, "--since", "1d"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["id"] for line in lines] == answered
    first = lines[0]
    assert first["model"] == MODEL
    assert first["version"] == 1
    assert first["inputs"]["mean radius"] == pytest.approx(records(1)[0]["mean radius"])
    assert set(first["outputs"]) >= {"label", "probabilities"}
    assert first["patient"] is not None
    assert "MRN-00" not in result.stdout  # pseudonyms only
    assert "export-" not in result.stdout  # nor the caller's request ids
    none = runner.invoke(app, ["monitor", "export", MODEL, "--version", "2"])
    assert none.exit_code == 0
    assert none.stdout == ""
    every = runner.invoke(app, ["monitor", "export"])  # all models with logged predictions
    assert len(every.stdout.splitlines()) == len(answered)

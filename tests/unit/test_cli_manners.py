"""The CLI's manners: --version, --json on lists and results, tables within 80 columns with whole
ids, one-paragraph errors (tracebacks only with --debug), every input format ``predict`` takes,
and unknown formats or options refused with the valid list and a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import skops.io
from rich.console import Console
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from medserve import __version__
from medserve.faces.cli import app
from medserve.features.monitoring.report import drift_table

runner = CliRunner()


def run(*args: str, columns: int = 80) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": str(columns)})
    return result.exit_code, result.output


def medserve(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """The installed command in a real process (its root wraps unexpected errors)."""
    env = {**os.environ, "MEDSERVE_HOME": str(home), "COLUMNS": "80"}
    env.pop("MEDSERVE_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "medserve", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture
def registered(home: Path, tmp_path: Path) -> dict[str, Path]:
    data = load_breast_cancer(as_frame=True)
    X = data.data.iloc[:, :4]
    model = LogisticRegression(max_iter=2000).fit(X, data.target)
    skops.io.dump(model, tmp_path / "model.skops")
    X.to_csv(tmp_path / "sample.csv", index=False)
    rows = X.iloc[:2].to_dict(orient="records")
    (tmp_path / "rows.csv").write_text(X.iloc[:2].to_csv(index=False))
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "instances.json").write_text(json.dumps({"instances": rows}))
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "columns.json").write_text(X.iloc[:2].to_json())  # pandas' own orientation
    code, out = run(
        "models", "register", "a-rather-long-model-name", str(tmp_path / "model.skops"),
        "--sample", str(tmp_path / "sample.csv"), "--alias", "production",
        "--description", "a description long enough to push a table past eighty columns " * 2,
    )  # fmt: skip
    assert code == 0, out
    return {p.name: p for p in tmp_path.iterdir()}


def test_version() -> None:
    code, out = run("--version")
    assert code == 0
    assert out.strip() == f"medserve {__version__}"


@pytest.mark.parametrize(
    "name", ["rows.csv", "rows.jsonl", "instances.json", "list.json", "columns.json"]
)
def test_predict_reads_csv_json_lines_and_the_apis_instances(
    registered: dict[str, Path], name: str
) -> None:
    code, out = run("predict", "a-rather-long-model-name", "--input", str(registered[name]))
    assert code == 0, out
    assert "row" in out
    assert "P(0)" in out  # each class's probability is named
    code, out = run("predict", "a-rather-long-model-name", "-i", str(registered[name]), "--json")
    assert code == 0, out
    body = json.loads(out)
    assert [p["row"] for p in body["predictions"]] == [0, 1]
    assert body["version"] == 1


def test_predict_on_a_missing_file_is_one_clear_error(registered: dict[str, Path]) -> None:
    code, out = run("predict", "a-rather-long-model-name", "--input", "missing.csv")
    assert code == 1
    assert "missing.csv: no such file" in out
    assert "Traceback" not in out


def test_unknown_formats_and_options_are_refused_with_the_valid_list(
    registered: dict[str, Path],
) -> None:
    code, out = run("models", "card", "a-rather-long-model-name@1", "--output", "pdf")
    assert code != 0
    assert "summary, json, html" in out
    code, out = run(
        "predict", "a-rather-long-model-name", "-i", str(registered["rows.csv"]), "--output", "pdf"
    )
    assert code != 0
    assert "'table'" in out
    assert "'json'" in out
    code, out = run("models", "list", "--colour")
    assert code != 0
    assert "No such option" in out


def test_lists_fit_80_columns_and_print_json(registered: dict[str, Path]) -> None:
    code, out = run("models", "list")
    assert code == 0, out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "a-rather-long-model-name" in out  # never cut
    assert "production → v1" in out
    code, out = run("models", "list", "--json")
    [model] = json.loads(out)["models"]
    assert model["latest_version"] == 1
    assert model["aliases"] == {"production": 1}
    code, out = run("models", "versions", "a-rather-long-model-name")
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 80
    code, out = run("models", "show", "a-rather-long-model-name@1", "--json")
    assert json.loads(out)["versions"][0]["version"] == 1


def test_key_ids_are_whole_and_accepted_by_revoke(home: Path) -> None:
    for name in ("ehr-production-integration", "dashboard"):
        assert run("keys", "create", name, "--role", "app", "--role", "auditor")[0] == 0
    code, out = run("keys", "list")
    assert code == 0, out
    assert max(len(line) for line in out.splitlines()) <= 80
    keys = json.loads(run("keys", "list", "--json")[1])["keys"]
    for key in keys:
        assert key["id"] in out  # the whole id, as printed
    code, out = run("keys", "revoke", keys[0]["id"])
    assert code == 0, out
    states = {k["id"]: k["state"] for k in json.loads(run("keys", "list", "--json")[1])["keys"]}
    assert states[keys[0]["id"]] == "revoked"


def test_an_unknown_option_is_refused_with_the_commands_options(tmp_path: Path) -> None:
    result = medserve("models", "list", "--colour", home=tmp_path / "home")
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "medserve models list has no option --colour" in message
    assert "--json, --page-size, --page-token, --search, --help" in message


def test_unexpected_errors_are_one_paragraph_unless_debug(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    home = blocker / "home"  # a home under a file: the OS refuses it
    result = medserve("init", home=home)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "--debug" in result.stderr
    result = medserve("--debug", "init", home=home)
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_evaluation_and_gate_results_print_json(registered: dict[str, Path]) -> None:
    data = load_breast_cancer(as_frame=True)
    frame = data.data.iloc[:, :4].copy()
    frame["target"] = data.target
    frame.to_csv(registered["rows.csv"].parent / "labelled.csv", index=False)
    code, out = run(
        "evaluate", "a-rather-long-model-name@1", "--data",
        str(registered["rows.csv"].parent / "labelled.csv"), "--label", "target",
        "--bootstrap", "50", "--json",
    )  # fmt: skip
    assert code == 0, out
    assert json.loads(out)["metrics"]["auroc"]["value"] > 0.5
    code, out = run("models", "gate", "a-rather-long-model-name@1", "--json")
    assert code == 1
    problems = json.loads(out)["problems"]
    assert all(
        p["fix"].startswith(("medserve", "declare", "register", "evaluate")) for p in problems
    )


def test_the_drift_table_fits_80_columns_without_losing_a_column() -> None:
    feature = {"psi": 0.31, "status": "insufficient data", "ks_pvalue": 0.5, "mean": 1234.0623}
    feature |= {"missing_rate": 0.0, "out_of_range_rate": 0.012}
    run = {
        "model": "breast-cancer",
        "window": {"n": 500},
        "drift": {"min_window_n": 30, "n": 500, "features": {"mean fractal dimension": feature}},
    }
    console = Console(width=80, record=True)
    console.print(drift_table(run))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for value in ("0.310", "0.5000", "0.012", "1234.0623", "fractal"):
        assert value in text


def test_an_error_quoting_brackets_prints_them(home: Path) -> None:
    """Messages quote the caller's text, which may hold brackets (a placeholder "[NAME]", a
    column "[x]"): printed as written, never read as console markup (which dropped them, or
    failed on a closing tag)."""
    for name in ("no-such[model]", "x[/y]"):
        code, out = run("models", "show", name)
        assert code == 1
        assert f"model '{name}' is not registered" in " ".join(out.split())


def test_a_missing_sample_file_is_one_clear_error(home: Path, tmp_path: Path) -> None:
    """``--sample`` reads its rows as ``predict --input`` does: a missing file is named."""
    data = load_breast_cancer(as_frame=True)
    model = LogisticRegression(max_iter=2000).fit(data.data.iloc[:, :4], data.target)
    skops.io.dump(model, tmp_path / "model.skops")
    code, out = run("models", "register", "m", str(tmp_path / "model.skops"), "--sample", "no.csv")
    assert code == 1
    assert "no.csv: no such file" in out
    assert "Traceback" not in out

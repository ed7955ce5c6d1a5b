"""The ``medserve`` command, run as users run it (typer's runner, a real home on disk)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import skops.io
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from medserve.faces.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("files")
    data = load_breast_cancer(as_frame=True)
    X = data.data.iloc[:, :5]
    model = LogisticRegression(max_iter=2000).fit(X, data.target)
    skops.io.dump(model, folder / "model.skops")
    (folder / "model.pkl").write_bytes(pickle.dumps(model))
    X.to_csv(folder / "sample.csv", index=False)
    X.iloc[:3].to_csv(folder / "rows.csv", index=False)
    bad = X.iloc[:2].copy()
    bad.iloc[0, 0] = None  # an empty cell: missing values are rejected by default
    bad.to_csv(folder / "bad.csv", index=False)
    return {
        "skops": folder / "model.skops",
        "pickle": folder / "model.pkl",
        "sample": folder / "sample.csv",
        "rows": folder / "rows.csv",
        "bad": folder / "bad.csv",
    }


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_register_list_alias_show_predict(home: Path, model_files: dict[str, Path]) -> None:
    code, out = run("init")
    assert code == 0
    assert (home / "registry.db").exists()
    code, out = run(
        "models",
        "register",
        "bc",
        str(model_files["skops"]),
        "--sample",
        str(model_files["sample"]),
        "--alias",
        "staging",
        "--tag",
        "team=cardio",
    )
    assert code == 0, out
    assert "version 1" in out
    code, out = run("models", "register", "bc", str(model_files["skops"]))
    assert code == 0, out
    assert "version 2" in out
    # These versions have no evaluation, so the promotion gate needs a named override.
    code, out = run(
        "models",
        "alias",
        "bc",
        "production",
        "1",
        "--reason",
        "approved",
        "--override-approver",
        "Dr Test",
    )
    assert code == 0, out
    code, out = run(
        "models",
        "alias",
        "bc",
        "production",
        "2",
        "--reason",
        "retrained",
        "--override-approver",
        "Dr Test",
    )
    assert code == 0, out
    assert "from v1 to v2" in out
    code, out = run("models", "list")
    assert code == 0
    assert "bc" in out
    assert "production → v2" in out
    assert "staging → v1" in out
    code, out = run("models", "show", "bc")
    assert code == 0
    assert "retrained" in out
    assert "approved" in out
    code, out = run("models", "show", "bc@staging")
    assert code == 0
    assert "onnxruntime" in out
    assert "mean radius" in out
    code, out = run("models", "versions", "bc")
    assert code == 0
    assert "skops" in out  # v2 had no sample, so it is served by scikit-learn
    code, out = run("predict", "bc@1", "--input", str(model_files["rows"]), "--output", "json")
    assert code == 0, out
    result = json.loads(out)
    assert result["version"] == 1
    assert len(result["predictions"]) == 3


def test_errors_are_one_line_and_exit_non_zero(home: Path, model_files: dict[str, Path]) -> None:
    code, out = run("models", "register", "bc", str(model_files["pickle"]))
    assert code == 1
    assert "error:" in out
    assert "--trust-pickle" in out
    code, out = run("models", "show", "nope")
    assert code == 1
    assert "nope" in out
    run(
        "models",
        "register",
        "bc",
        str(model_files["skops"]),
        "--sample",
        str(model_files["sample"]),
    )
    code, out = run("predict", "bc", "--input", str(model_files["rows"]))
    assert code == 1
    assert "production" in out  # no production alias: says so instead of guessing
    code, out = run("predict", "bc@1", "--input", str(model_files["bad"]))
    assert code == 1
    assert "row 0" in out
    assert "mean radius" in out


def test_signature_edit(home: Path, model_files: dict[str, Path], tmp_path: Path) -> None:
    run(
        "models",
        "register",
        "bc",
        str(model_files["skops"]),
        "--sample",
        str(model_files["sample"]),
    )
    code, out = run("models", "signature", "bc@1")
    assert code == 0
    signature = json.loads(out)
    signature["inputs"][0]["maximum"] = 10.0
    edit = tmp_path / "sig.json"
    edit.write_text(json.dumps({"inputs": signature["inputs"]}))
    code, out = run("models", "signature", "bc@1", "--edit", str(edit))
    assert code == 0, out
    assert json.loads(out)["inputs"][0]["maximum"] == 10.0
    code, out = run("predict", "bc@1", "--input", str(model_files["rows"]))
    assert code == 1  # mean radius ~ 17.99 is now above the edited maximum
    assert "maximum" in out


def test_ensemble_from_the_cli(home: Path, model_files: dict[str, Path], tmp_path: Path) -> None:
    for name in ("bc-a", "bc-b"):
        code, out = run(
            "models",
            "register",
            name,
            str(model_files["skops"]),
            "--sample",
            str(model_files["sample"]),
            "--alias",
            "production",
        )
        assert code == 0, out
    spec = tmp_path / "ensemble.yaml"
    spec.write_text(
        "members:\n"
        "  - {model: bc-a, version: production, weight: 2}\n"
        "  - {model: bc-b, version: '1', weight: 1}\n"
        "combiner: weighted_mean\n"
    )
    code, out = run("models", "ensemble", "bc-mix", str(spec), "--alias", "production")
    assert code == 0, out
    assert "registered ensemble bc-mix version 1" in " ".join(out.split())
    code, out = run("predict", "bc-mix", "--input", str(model_files["rows"]), "--output", "json")
    assert code == 0, out
    assert "members" in out  # each member's output and contribution
    spec.write_text(
        "members:\n  - {model: nope, version: '1'}\n  - {model: bc-b, version: '1'}\n"
        "combiner: weighted_mean\n"
    )
    code, out = run("models", "ensemble", "bc-bad", str(spec))
    assert code == 1
    assert "nope" in out

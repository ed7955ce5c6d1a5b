"""A model trained outside medserve reaches production through the gate, without an override:
the card from the template, a test evaluation with the test set's declared provenance (patient
ids checked against the training data), then ``models alias NAME production V``."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.governance import GovernanceStore
from medserve.faces.cli import app
from medserve.features.governance.cards import AUTHOR_TEMPLATE_KEYS

ROOT = Path(__file__).resolve().parents[3]
CARD = ROOT / "examples" / "external" / "sepsis_card.yaml"
runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's files, written by its own script (as the README's tour does)."""
    spec = importlib.util.spec_from_file_location(
        "train_elsewhere", ROOT / "examples" / "external" / "train_elsewhere.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("sepsis-files")
    module.main(out)
    return out


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def _evaluate(files: Path, *extra: str) -> tuple[int, str]:
    return run(
        "evaluate", "sepsis@1", "--data", str(files / "test.csv"), "--label", "sepsis",
        "--subgroup", "sex", "--kind", "test", "--bootstrap", "100", *extra,
    )  # fmt: skip


def test_external_model_reaches_production_without_override(home: Path, files: Path) -> None:
    code, out = run(
        "models", "register", "sepsis", str(files / "model.skops"),
        "--sample", str(files / "train.csv"),
    )  # fmt: skip
    assert code == 0, out

    # Blocked: every problem listed (none cut), each with the command that fixes it.
    code, out = run("models", "gate", "sepsis@1")
    assert code == 1
    count = int(re.search(r"blocked by (\d+) problems", out).group(1))  # type: ignore[union-attr]
    listed = [line for line in out.splitlines() if line.startswith("  - ")]
    assert count == len(listed) > 20
    assert all(re.search(r"\[fix \d+\]$", line) for line in listed)
    assert "--split-declared" in out
    assert "--template" in out
    code, out = run("models", "alias", "sepsis", "production", "1")
    assert code == 1
    assert len([line for line in out.splitlines() if line.startswith("  - ")]) == count

    # The template has every author statement and the acceptance block.
    code, out = run("models", "card", "sepsis@1", "--template")
    assert code == 0
    template = yaml.safe_load(out)
    for key in AUTHOR_TEMPLATE_KEYS:
        node = template
        for part in key.split("."):
            node = node[part]
    assert template["acceptance"]
    assert "# " in out

    code, out = run("models", "card", "sepsis@1", "--edit", str(CARD))
    assert code == 0, out
    # A test evaluation without provenance: the split is still missing.
    code, out = _evaluate(files)
    assert code == 0, out
    code, out = run("models", "gate", "sepsis@1", "--json")
    assert code == 1
    assert any(
        "no recorded train/test split" in p["message"] for p in yaml.safe_load(out)["problems"]
    )

    code, out = _evaluate(
        files, "--split-declared", "held-out site B, 2025",
        "--patient-id", "patient_id", "--train-data", str(files / "train.csv"),
    )  # fmt: skip
    assert code == 0, out
    assert "0 patients also in the training data" in out
    code, out = run("models", "gate", "sepsis@1")
    assert code == 0, out
    code, out = run("models", "alias", "sepsis", "production", "1", "--reason", "approved")
    assert code == 0, out
    registry = Registry.open(Settings(home=home))
    try:
        [event] = registry.store.alias_history("sepsis", "production")
        assert event.reason.startswith("promotion gate passed")
        [stored, *_] = GovernanceStore(registry.store).evaluations("sepsis", 1)
    finally:
        registry.close()
    split = stored["result"]["dataset"]["split"]
    assert split["declared"] == "held-out site B, 2025"
    assert split["patient_overlap"] == 0
    assert split["train_patients"] == 2000
    assert "B-000001" not in str(stored)  # ids are compared, never stored


def test_overlapping_patients_block_the_gate(home: Path, files: Path) -> None:
    code, out = run(
        "models", "register", "sepsis", str(files / "model.skops"),
        "--sample", str(files / "train.csv"),
    )  # fmt: skip
    assert code == 0, out
    assert run("models", "card", "sepsis@1", "--edit", str(CARD))[0] == 0
    code, out = _evaluate(
        files, "--split-declared", "same site", "--patient-id", "patient_id",
        "--train-data", str(files / "test.csv"),
    )  # fmt: skip
    assert code == 0, out
    code, out = run("models", "gate", "sepsis@1")
    assert code == 1
    assert "800 patients are in both train and test" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--patient-id", "patient_id"], "--patient-id without --train-data checks nothing"),
        (["--split-declared", "x", "--patient-id", "nope", "--train-data", "TRAIN"], "nope"),
        (["--kind", "local", "--split-declared", "x"], "add --kind test"),
    ],
)
def test_provenance_options_refused_when_they_prove_nothing(
    home: Path, files: Path, extra: list[str], message: str
) -> None:
    assert run("models", "register", "sepsis", str(files / "model.skops"))[0] == 0
    extra = [str(files / "train.csv") if e == "TRAIN" else e for e in extra]
    code, out = _evaluate(files, *extra)
    assert code == 1
    assert message in " ".join(out.split())


def test_a_declaration_alone_is_accepted_and_recorded_as_unchecked(home: Path, files: Path) -> None:
    """Without the training data at hand, the author's statement is what the gate accepts (the
    issue's ``--split-declared``); the record says nothing was compared."""
    assert run("models", "register", "sepsis", str(files / "model.skops"))[0] == 0
    assert run("models", "card", "sepsis@1", "--edit", str(CARD))[0] == 0
    code, out = _evaluate(files, "--split-declared", "held-out site B, 2025")
    assert code == 0, out
    code, out = run("models", "gate", "sepsis@1")
    assert code == 0, out
    code, out = run("models", "alias", "sepsis", "production", "1", "--reason", "approved")
    assert code == 0, out
    registry = Registry.open(Settings(home=home))
    try:
        [stored, *_] = GovernanceStore(registry.store).evaluations("sepsis", 1)
        [event] = registry.store.alias_history("sepsis", "production")
    finally:
        registry.close()
    # the history says what was shown: a declaration, not a patient-id check
    assert "declared by the author, not checked by patient id" in event.reason
    assert "no patient overlap" not in event.reason
    split = stored["result"]["dataset"]["split"]
    assert split == {
        "method": "declared by the author",
        "patient_overlap": None,
        "declared": "held-out site B, 2025",
    }

"""``medserve models traffic`` and ``medserve models compare``, run as users run them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.faces.cli import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_split_show_refuse_override_and_compare(home: Path) -> None:
    registry = Registry.open(Settings(home=home))
    try:
        X = pd.DataFrame(np.random.default_rng(0).normal(size=(40, 2)), columns=["a", "b"])
        y = (X["a"] > 0).astype(int)
        registry.register("m", LogisticRegression().fit(X, y), sample=X, alias="production")
        registry.register("m", LogisticRegression(C=0.1).fit(X, y), sample=X)
    finally:
        registry.close()
    code, out = run("models", "traffic", "m", "production", "--json")
    assert code == 0, out
    assert json.loads(out)["split"] == {"1": 100}
    code, out = run("models", "traffic", "m", "--split", "1:90,2:15")
    assert code == 1
    assert "add up to 100" in out
    code, out = run("models", "traffic", "m", "--split", "1:90,2:10")
    assert code == 1  # v2 has no card, no evaluation: the gate refuses the canary
    assert "gate problems" in out
    code, out = run(
        "models", "traffic", "m", "--split", "1:90,2:10", "--shadow", "2", "--reason", "x"
    )
    assert code == 1
    assert "both a canary and a shadow" in out
    code, out = run(
        "models",
        "traffic",
        "m",
        "--split",
        "1:90,2:10",
        "--reason",
        "pilot on ward 4",
        "--override-approver",
        "Dr. Lee",
    )
    assert code == 0, out
    assert "v1 90%, v2 10%" in out
    assert "OVERRIDE by Dr. Lee" in out
    code, out = run("models", "compare", "m", "--json")
    assert code == 0, out
    body = json.loads(out)
    assert body["traffic"]["split"] == {"1": 90, "2": 10}
    assert body["versions"] == []  # nothing served yet


def test_ray_config_sets_a_versions_own_deployment(home: Path) -> None:
    registry = Registry.open(Settings(home=home))
    try:
        X = pd.DataFrame(np.random.default_rng(0).normal(size=(40, 2)), columns=["a", "b"])
        registry.register("m", LogisticRegression().fit(X, X["a"] > 0), sample=X)
    finally:
        registry.close()
    code, out = run("models", "ray-config", "m", "1")
    assert code == 0, out
    assert json.loads(out) == {"model": "m", "version": 1, "ray": {}, "deployment": "model pool"}
    wanted = {"dedicated": True, "num_cpus": 2, "min_replicas": 1, "max_replicas": 3}
    code, out = run("models", "ray-config", "m", "1", "--set", json.dumps(wanted))
    assert code == 0, out
    assert json.loads(out)["deployment"] == "own"
    code, out = run("models", "ray-config", "m", "1", "--set", '{"num_cpus": "many"}')
    assert code == 1
    code, out = run("models", "ray-config", "m", "1")
    assert json.loads(out)["ray"] == wanted  # the refused change left it as it was

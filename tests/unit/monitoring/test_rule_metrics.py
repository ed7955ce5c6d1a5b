"""An alert rule on a metric no run computes would never fire (which looks like health):
refused, naming the metric and the known ones, in the store and in the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medserve.core.errors import InvalidRequestError
from medserve.core.registry.service import Registry
from medserve.core.store.monitoring import MonitoringStore
from medserve.faces.cli import app

MODEL = "breast-cancer"


@pytest.mark.parametrize("metric", ["psi_maxx", "AUROC", "psi", "psi:", "drift:mean radius"])
def test_unknown_rule_metrics_are_refused(bc_registry: Registry, metric: str) -> None:
    store = MonitoringStore(bc_registry.store)
    with pytest.raises(InvalidRequestError) as refused:
        store.add_rule(MODEL, metric, ">", 0.25)
    assert repr(metric) in str(refused.value)
    assert "psi_max" in str(refused.value)
    assert "auroc" in str(refused.value)
    assert store.rules(MODEL) == []


@pytest.mark.parametrize(
    "metric", ["psi_max", "auroc", "mae", "psi:mean radius", "ks_pvalue:p:malignant"]
)
def test_known_rule_metrics_are_kept(bc_registry: Registry, metric: str) -> None:
    assert MonitoringStore(bc_registry.store).add_rule(MODEL, metric, ">", 0.25).metric == metric


def test_the_cli_refuses_an_unknown_metric(bc_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSERVE_HOME", str(bc_home))
    result = CliRunner().invoke(app, ["monitor", "rule", MODEL, "psi_maxx", ">", "0.25"])
    assert result.exit_code != 0
    assert "psi_maxx" in result.output
    assert "prediction_psi" in result.output

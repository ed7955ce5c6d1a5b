"""The shipped Grafana dashboard only queries metrics that medserve actually exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import medserve.core.metrics
import medserve.serving.metrics

DASHBOARD = Path(__file__).parents[3] / "deploy" / "grafana" / "medserve-dashboard.json"


def test_dashboard_queries_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"medserve_[a-z_]+", e)}
    exported = set()
    for family in REGISTRY.collect():  # labelled families may have no samples yet
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        exported.add(family.name)
        exported.update(family.name + s for s in suffixes.get(family.type, []))
    assert medserve.core.metrics.LOG_QUEUE_DEPTH is not None
    missing = sorted(m for m in used if m not in exported)
    assert missing == []
    assert len(used) >= 10

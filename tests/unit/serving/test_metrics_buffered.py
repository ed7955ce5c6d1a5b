"""Per-request metrics are counted in plain integers and flushed into Prometheus: after a flush
the exported samples equal what observing each request directly would have exported."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families
from tests.support import fill_disk, small_tmpfs

from medserve.serving import metrics
from medserve.serving.metrics import REQUESTS


def _samples(name: str, model: str) -> dict[tuple[str, str], float]:
    text = metrics.render().decode()
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name.startswith(name)
                and labels.get("model") == model
                and labels.get("protocol", "v2") == "v2"
            ):
                found[(sample.name, sample.labels.get("le", ""))] = sample.value
    return found


def test_flushed_counts_equal_direct_observation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)  # this process's registry
    model = metrics.ModelMetrics("buffered-model", "1")
    latencies = [0.0001, 0.0005, 0.0007, 0.003, 0.003, 0.02, 4.0]
    for seconds in latencies:
        model.observe("v2", seconds, rows=2)
    assert REQUESTS.labels("buffered-model", "1", "v2", "200")._value.get() == 0  # none yet
    reference = Histogram(
        "reference_seconds", "d", buckets=metrics.LATENCY_BUCKETS, registry=CollectorRegistry()
    )
    for seconds in latencies:
        reference.observe(seconds)
    exported = _samples("medserve_request_duration_seconds", "buffered-model")  # render flushes
    expected = {
        (
            s.name.replace("reference_seconds", "medserve_request_duration_seconds"),
            s.labels.get("le", ""),
        ): s.value
        for s in reference.collect()[0].samples
        if not s.name.endswith("_created")
    }
    assert {k: v for k, v in exported.items() if not k[0].endswith("_created")} == expected
    assert _samples("medserve_rows_total", "buffered-model") == {("medserve_rows_total", ""): 14}
    assert model.ok["v2"]._value.get() == len(latencies)
    assert REQUESTS.labels("buffered-model", "1", "v2", "200")._value.get() == len(latencies)


def test_the_server_flushes_on_its_event_loop() -> None:
    model = metrics.ModelMetrics("ticking-model", "1")
    ticked = REQUESTS.labels("ticking-model", "1", "records", "200")

    async def run() -> float:
        with metrics.flushing(0.01):
            model.observe("records", 0.001, rows=1)
            loop = asyncio.get_running_loop()
            flushed = loop.create_future()

            def check() -> None:
                if ticked._value.get() == 1:
                    flushed.set_result(None)
                else:
                    loop.call_soon(check)

            check()
            await asyncio.wait_for(flushed, timeout=10)
        return float(ticked._value.get())

    assert asyncio.run(run()) == 1


def test_a_full_disk_under_the_metrics_files_is_an_error_not_a_sigbus(tmp_path: Path) -> None:
    """The memory-mapped metrics files are allocated before they are mapped: on a real full
    disk (a small tmpfs) a worker's first metrics file is an OSError the flush absorbs (the
    counts wait for room), not a SIGBUS at the first store into an unallocated page."""
    script = """
import os, sys
from medserve.serving import metrics
model = metrics.ModelMetrics("full-disk-model", "1")
model.observe("v2", 0.001, rows=1)
metrics.flush()  # must not raise: the counts stay pending
assert model._pending["v2"][0] == 1, "written on a full disk?"
os.unlink(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "..", "filler"))
metrics.flush()  # room again
assert model._pending["v2"][0] == 0
assert b'medserve_requests_total{model="full-disk-model"' in metrics.render()
print("survived")
"""
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        (disk / "prometheus").mkdir()
        fill_disk(disk)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(disk / "prometheus")}
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
        )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # -7: SIGBUS
    assert done.stdout.strip() == "survived"

"""``python -m benchmarks.monitor_scale``: memory and time of ``medserve monitor run`` as the
prediction log grows.

For each N (default 250k, 1M, 3M, 10M) a fresh home gets the breast-cancer LogisticRegression
(30 float features, registered with its sample, so it has a reference) and N synthetic logged
predictions spread over the last 50 minutes, 10% of them labelled. The log is filled quickly by
inserting packed rows directly (``mon_prediction_batches`` as the writer makes them: ids, times,
the float32 inputs as ``.npy``, outputs by column; 5,000 predictions a row, as a busy server's
writer packs them), not through a server. Then one monitoring run over a one-hour window (drift
of every feature and of the predictions, live performance with the site subgroups) runs in a
fresh process, which reports its time and peak resident memory (``ru_maxrss``).

    python -m benchmarks.monitor_scale                 # 250k 1M 3M 10M
    python -m benchmarks.monitor_scale --sizes 250000  # one size
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

MODEL = "breast-cancer"
PACK_ROWS = 5_000
SIZES = (250_000, 1_000_000, 3_000_000, 10_000_000)
LABELLED = 0.1
MEASURE = [sys.executable, "-m", "benchmarks.monitor_scale", "--measure"]
SPREAD_S = 3000.0  # predictions logged over the last 50 minutes; the window is one hour


def prepare(home: Path, n: int, now: datetime) -> float:
    """A home with the model registered and ``n`` logged predictions; returns seconds taken."""
    # lazy imports: the measuring child imports only what a monitoring run needs
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medserve.core.registry.service import Registry
    from medserve.core.registry.signature import infer_signature
    from medserve.core.settings import Settings
    from medserve.core.store.monitoring import MonitoringStore
    from medserve.faces.demo.data import breast_cancer_frame

    started = time.perf_counter()
    X, y = breast_cancer_frame()
    estimator = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    estimator.fit(X, y)
    registry = Registry.open(Settings(home=home))
    try:
        registry.register(
            MODEL, estimator, sample=X, signature=infer_signature(X), alias="production"
        )
        engine = MonitoringStore(registry.store).engine
    finally:
        registry.close()

    def predict(matrix: np.ndarray) -> np.ndarray:
        return np.asarray(estimator.predict_proba(pd.DataFrame(matrix, columns=X.columns)))

    templates = make_templates(X.to_numpy(dtype=np.float64), predict, list(estimator.classes_))
    fill_log(engine, MODEL, 1, n, now, templates)
    return time.perf_counter() - started


Template = tuple[bytes, str, str, np.ndarray]


def make_templates(
    base: np.ndarray, predict: Any, classes: list[Any], count: int = 8, rows: int = PACK_ROWS
) -> list[Template]:
    """A few distinct packs (rows of ``base`` with 2% noise, their predicted probabilities, a
    site and a drawn outcome per row), reused by ``fill_log``: filling stays I/O-bound."""
    from medserve.core.prediction_log import npy_bytes

    rng = np.random.default_rng(0)
    positive = [str(c) for c in classes].index("malignant")
    templates = []
    for _ in range(count):
        picked = base[rng.integers(0, len(base), rows)] * rng.normal(1.0, 0.02, (rows, 1))
        matrix = np.ascontiguousarray(picked, dtype=np.float32)
        probabilities = np.asarray(predict(matrix), dtype=np.float32)
        labels = np.asarray([str(c) for c in classes], dtype=object)[probabilities.argmax(1)]
        truth = rng.random(rows) < probabilities[:, positive]
        outputs = orjson.dumps(
            {"probabilities": probabilities, "label": labels.tolist()},
            option=orjson.OPT_SERIALIZE_NUMPY,
        ).decode()
        sites = orjson.dumps(rng.choice(["north", "south"], rows).tolist()).decode()
        templates.append((npy_bytes(matrix), outputs, sites, truth))
    return templates


def fill_log(
    engine: Any, model: str, version: int, n: int, now: datetime, templates: list[Template]
) -> None:
    """Insert ``n`` logged predictions of ``model`` as packed rows (as the log's writer packs
    them), spread over the ``SPREAD_S`` seconds before ``now``; one row in ten labelled."""
    from medserve.core.prediction_log import EPOCH, npy_bytes
    from medserve.core.store.tables_monitoring import (
        mon_outcomes,
        mon_prediction_batches,
    )

    size = len(templates[0][3])
    start_us = (now - EPOCH) // timedelta(microseconds=1) - int(SPREAD_S * 1e6)
    step_us = SPREAD_S * 1e6 / max(1, n)
    pos, seq = 0, 0
    with engine.begin() as conn:
        while pos < n:
            count = min(size, n - pos)
            blob, outputs, sites, truth = templates[seq % len(templates)]
            if count < size:  # the last, partial pack: its own slices
                matrix = np.load(io.BytesIO(blob))[:count]
                blob = npy_bytes(np.ascontiguousarray(matrix))
                parsed = orjson.loads(outputs)
                outputs = orjson.dumps({k: v[:count] for k, v in parsed.items()}).decode()
                sites = orjson.dumps(orjson.loads(sites)[:count]).decode()
            times = [start_us + int((pos + i) * step_us) for i in range(count)]
            rid = f"{times[0]:013x}{seq:012x}"
            inserted = conn.execute(
                mon_prediction_batches.insert().returning(mon_prediction_batches.c.seq),
                {
                    "model_name": model,
                    "version": version,
                    "first_at": EPOCH + timedelta(microseconds=times[0]),
                    "last_at": EPOCH + timedelta(microseconds=times[-1]),
                    "n": count,
                    "ids": orjson.dumps([f"{rid}-{i}" for i in range(count)]).decode(),
                    "times": orjson.dumps(times).decode(),
                    "patients": None,
                    "sites": sites,
                    "inputs": None,
                    "inputs_npy": blob,
                    "outputs": outputs,
                    "latency_ms": orjson.dumps([1.0] * count).decode(),
                    "missing": None,
                },
            ).scalar_one()
            at = datetime.now(UTC)
            conn.execute(
                mon_outcomes.insert(),
                [
                    {
                        "batch_seq": inserted,
                        "idx": i,
                        "outcome": '"malignant"' if truth[i] else '"benign"',
                        "outcome_at": at,
                    }
                    for i in range(0, count, round(1 / LABELLED))
                ],
            )
            pos += count
            seq += 1


def _resident_kb() -> int:
    """The process's resident memory now (Linux), in kB; ``ru_maxrss`` is only the peak."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() // 1024


def measure(home: str, now: str) -> dict[str, Any]:
    """In a fresh process: one monitoring run, its time and peak resident memory."""
    from medserve.core.monitoring_config import ModelMonitoringConfig
    from medserve.core.registry.service import Registry
    from medserve.core.settings import Settings
    from medserve.core.store.monitoring import MonitoringStore
    from medserve.features.monitoring.runner import run_model

    registry = Registry.open(Settings(home=Path(home)))
    store = MonitoringStore(registry.store)
    store.set_config(MODEL, ModelMonitoringConfig(positive_class="malignant"), "bench")
    before = _resident_kb()  # imports and the open registry, before the run
    started = time.perf_counter()
    result = run_model(store, registry.store, MODEL, window_s=3600, now=datetime.fromisoformat(now))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    registry.close()
    overall = result["performance"]["overall"]
    return {
        "n": result["window"]["n"],
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak / 1024, 1),
        "rss_before_run_mb": round(before / 1024, 1),  # resident at the run's start
        "psi_max": round(result["drift"]["summary"]["psi_max"], 4),
        "labelled": result["performance"]["matured_window"]["n_labelled"],
        "auroc": overall.get("auroc"),
        "auroc_max_error": overall.get("auroc_max_error"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--measure", nargs=2, metavar=("HOME", "NOW"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0
    print(f"{'predictions':>12} {'fill s':>8} {'run s':>7} {'peak RSS MB':>12} {'before MB':>10}")
    for n in args.sizes:
        home = Path(tempfile.mkdtemp(prefix="monitor-scale-"))
        try:
            now = datetime.now(UTC)
            filled = prepare(home, n, now)
            child = subprocess.run(
                [*MEASURE, str(home), (now + timedelta(seconds=1)).isoformat()],
                check=True,
                capture_output=True,
                text=True,
            )
            got = json.loads(child.stdout.strip().splitlines()[-1])
            assert got["n"] == n, got
            print(
                f"{n:>12,} {filled:>8.1f} {got['seconds']:>7.2f} {got['peak_rss_mb']:>12.1f} "
                f"{got['rss_before_run_mb']:>10.1f}   {json.dumps(got)}",
                flush=True,
            )
        finally:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

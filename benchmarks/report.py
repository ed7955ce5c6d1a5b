"""Results: one JSON document, a rich console table, and the same table as Markdown.

Tables are built once as plain rows of strings so the console and the Markdown never disagree.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.wrk import WrkResult

PEERS = ("mlserver", "mlflow")
TITLES = {"medserve": "medserve", "mlserver": "MLServer", "mlflow": "MLflow"}
MODEL_TITLES = {"breast-cancer-lr": "LogReg (scaled)", "breast-cancer-rf": "RandomForest 100"}
# metric -> (label, higher_is_better)
METRICS = {
    "p50_ms": ("p50 ms", False),
    "p99_ms": ("p99 ms", False),
    "rps": ("req/s", True),
    "rows_per_s": ("rows/s", True),
}


@dataclass
class Measurement:
    server: str
    model: str
    pattern: str
    pattern_title: str
    endpoint: str
    primary: bool
    rows_per_request: int
    metrics: tuple[str, ...]
    wrk: WrkResult

    def value(self, metric: str) -> float:
        if metric == "rps":
            return self.wrk.rps
        if metric == "rows_per_s":
            return self.wrk.rps * self.rows_per_request
        return float(getattr(self.wrk, metric))

    @property
    def errors(self) -> int:
        return self.wrk.non_2xx + self.wrk.socket_errors


@dataclass
class LaunchInfo:
    server: str
    version: str
    models: list[str]
    command: str
    ready_s: float
    rss_mb_warm: float
    rss_mb_end: float


@dataclass
class Report:
    machine: dict[str, Any]
    command: str
    date: str
    settings: dict[str, Any]
    floor: dict[str, dict[str, float]] = field(default_factory=dict)
    launches: list[LaunchInfo] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        for raw, m in zip(doc["measurements"], self.measurements, strict=True):
            raw["rps"] = m.wrk.rps
            raw["rows_per_s"] = m.value("rows_per_s")
        return doc


def _fmt(metric: str, value: float) -> str:
    if metric.endswith("_ms"):
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _cell(m: Measurement | None, metric: str) -> str:
    if m is None:
        return "—"
    text = _fmt(metric, m.value(metric))
    if m.errors:
        text += f" ⚠ {m.wrk.non_2xx} non-2xx, {m.wrk.socket_errors} socket errors"
    return text


def _ratio(ours: Measurement | None, peer: Measurement | None, metric: str) -> str:
    if ours is None or peer is None or peer.value(metric) == 0:
        return "—"
    return f"{ours.value(metric) / peer.value(metric):.2f}x"


def comparison_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    header = ["model", "pattern", "metric", "medserve", "MLServer", "MLflow"]
    header += ["medserve/MLServer", "medserve/MLflow"]
    index = {(m.server, m.model, m.pattern, m.endpoint): m for m in report.measurements}
    primary = {(m.server, m.model, m.pattern): m for m in report.measurements if m.primary}
    extras = sorted({(m.endpoint, m.server) for m in report.measurements if not m.primary})
    rows: list[list[str]] = []
    seen: list[tuple[str, str, str, tuple[str, ...]]] = []
    for m in report.measurements:
        key = (m.model, m.pattern, m.pattern_title, m.metrics)
        if key not in seen:
            seen.append(key)
    for model, pattern, title, metrics in seen:
        ours = primary.get(("medserve", model, pattern))
        peers = [primary.get((p, model, pattern)) for p in PEERS]
        for metric in metrics:
            label = METRICS[metric][0]
            rows.append(
                [MODEL_TITLES.get(model, model), title, label, _cell(ours, metric)]
                + [_cell(p, metric) for p in peers]
                + [_ratio(ours, p, metric) for p in peers]
            )
        for endpoint, server in extras:
            extra = index.get((server, model, pattern, endpoint))
            if extra is None:
                continue
            for metric in metrics:
                label = f"{title} ({endpoint} API)"
                cell = _cell(extra, metric)
                rows.append([MODEL_TITLES.get(model, model), label, METRICS[metric][0], cell])
                rows[-1] += ["—"] * 4
    return header, rows


def launch_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    header = ["server", "version", "models", "ready (s)", "RSS after warm-up (MB)", "RSS end (MB)"]
    rows = [
        [
            TITLES.get(li.server, li.server),
            li.version,
            ", ".join(li.models),
            f"{li.ready_s:.2f}",
            f"{li.rss_mb_warm:.0f}",
            f"{li.rss_mb_end:.0f}",
        ]
        for li in report.launches
    ]
    return header, rows


def floor_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    header = ["model", "onnxruntime, 1 thread (µs/row)", "sklearn predict (µs/row)"]
    rows = [
        [MODEL_TITLES.get(name, name), f"{v['onnxruntime_us']:.1f}", f"{v['sklearn_us']:.0f}"]
        for name, v in report.floor.items()
    ]
    return header, rows


def _rich(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 3 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _sections(report: Report) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    return [
        ("Throughput and latency (wrk on 127.0.0.1)", comparison_rows(report)),
        ("Startup and memory", launch_rows(report)),
        ("In-process floor (one row, no server)", floor_rows(report)),
    ]


def print_report(report: Report, console: Console) -> None:
    for title, (header, rows) in _sections(report):
        console.print(_rich(title, header, rows))
    console.print(
        "ratio = medserve ÷ peer: above 1 is better for req/s and rows/s, below 1 for latency."
    )
    for server, message in report.failures.items():
        console.print(f"[bold red]{server} failed:[/] {message}", highlight=False)


def write_report(report: Report, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "latest.json", folder / "latest.md"
    json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    m = report.machine
    parts = [
        f"Measured {report.date} on {m['nproc']} cores of {m['cpu_model']}, {m['os']};"
        f" command: `{report.command}`.",
        "Single-row requests for c=1 and c=32; 100-row batches for the batch pattern. "
        "Ratio = medserve ÷ peer (above 1 is better for req/s and rows/s, below 1 for latency).",
    ]
    for title, (header, rows) in _sections(report):
        parts += [f"### {title}", _markdown(header, rows)]
    if report.failures:
        parts += [
            "### Failures",
            *(f"- {s}: {msg.splitlines()[0]}" for s, msg in report.failures.items()),
        ]
    md_path.write_text("\n\n".join(parts) + "\n")
    return json_path, md_path

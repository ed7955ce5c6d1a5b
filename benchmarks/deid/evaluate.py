# ruff: noqa: E501  (tables of templates and report lines read better unwrapped)
"""Per-category recall and precision of the free-text de-identifier, with 95% Wilson intervals.

    python -m benchmarks.deid.evaluate                      # held-out half, current detector
    python -m benchmarks.deid.evaluate --half dev --misses 40
    python -m benchmarks.deid.evaluate --detector git:HEAD  # the regex rules of a past commit

Rules, applied the same way to every detector:

- an identifier is *caught* when every letter and digit of it is removed, except the part Safe
  Harbor lets us keep (a date's year, a ZIP code's first three digits);
- a *redaction* is a span the detector removed; it is correct when it overlaps a true identifier
  (of any category). Precision = correct redactions / redactions;
- categories of redactions come from the detector's labels (``[NAME]`` -> name ...), so the
  per-category precision says how often a label is right to remove *something*.

Writes ``benchmarks/results/deid-<date>.json`` (one entry per detector and half, merged).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.deid.generator import CATEGORIES, Identifier, Note, generate

RESULTS = Path(__file__).resolve().parents[1] / "results"


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    label: str


Redactor = Callable[[str], list[Span]]

# Detector labels -> benchmark categories.
_LABEL_CATEGORY = {
    "NAME": "name",
    "DATE": "date",
    "CITY": "location",
    "ADDRESS": "location",
    "LOCATION": "location",
    "ZIP": "location",
    "EMAIL": "contact",
    "URL": "contact",
    "EMPLOYER": "employer",
}


def label_category(label: str) -> str:
    return _LABEL_CATEGORY.get(label.strip("[]").upper(), "number")


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval: sensible at 0 and n, unlike the normal approximation."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _caught(identifier: Identifier, removed: bytearray, text: str) -> bool:
    for i in range(identifier.start, identifier.end):
        if identifier.keep and identifier.keep[0] <= i < identifier.keep[1]:
            continue
        if text[i].isalnum() and not removed[i]:
            return False
    return True


def _ratio(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "value": (k / n) if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


def evaluate(notes: list[Note], redactor: Redactor, *, misses: int = 0) -> dict[str, Any]:
    """Recall per category and kind, precision per label category, latency per note."""
    caught: Counter[str] = Counter()
    total: Counter[str] = Counter()
    kind_caught: Counter[str] = Counter()
    kind_total: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    missed: dict[str, list[str]] = defaultdict(list)
    false_pos: list[str] = []
    latencies: list[float] = []
    for note in notes:
        t0 = time.perf_counter()
        spans = redactor(note.text)
        latencies.append(time.perf_counter() - t0)
        removed = bytearray(len(note.text))
        for s in spans:
            removed[s.start : s.end] = b"\x01" * (s.end - s.start)
        for ident in note.identifiers:
            ok = _caught(ident, removed, note.text)
            total[ident.category] += 1
            kind_total[f"{ident.category}/{ident.kind}"] += 1
            if ok:
                caught[ident.category] += 1
                kind_caught[f"{ident.category}/{ident.kind}"] += 1
            elif len(missed[ident.category]) < misses:
                ctx = note.text[max(0, ident.start - 30) : ident.end + 20].replace("\n", " ")
                missed[ident.category].append(f"{ident.kind}: {ident.text!r} in ...{ctx}...")
        for s in spans:
            cat = label_category(s.label)
            predicted[cat] += 1
            if any(s.start < i.end and i.start < s.end for i in note.identifiers):
                correct[cat] += 1
            elif len(false_pos) < misses:
                ctx = note.text[max(0, s.start - 25) : s.end + 15].replace("\n", " ")
                false_pos.append(f"{s.label}: {note.text[s.start : s.end]!r} in ...{ctx}...")
    categories = [c for c in CATEGORIES if total[c] or predicted[c]]
    report: dict[str, Any] = {
        "notes": len(notes),
        "identifiers": sum(total.values()),
        "recall": {c: _ratio(caught[c], total[c]) for c in categories},
        "precision": {c: _ratio(correct[c], predicted[c]) for c in categories},
        "recall_overall": _ratio(sum(caught.values()), sum(total.values())),
        "precision_overall": _ratio(sum(correct.values()), sum(predicted.values())),
        "recall_by_kind": {k: _ratio(kind_caught[k], n) for k, n in sorted(kind_total.items())},
        "latency_ms": {
            "median": round(statistics.median(latencies) * 1000, 3),
            "p90": round(sorted(latencies)[int(0.9 * (len(latencies) - 1))] * 1000, 3),
            "mean_chars": round(statistics.mean(len(n.text) for n in notes)),
        },
    }
    if misses:
        report["missed"] = dict(missed)
        report["false_positives"] = false_pos
    return report


# -- detectors ----------------------------------------------------------------------------------


def current_redactor() -> Redactor:
    from medserve.core import phi

    def redact(text: str) -> list[Span]:
        return [Span(r.start, r.end, r.label) for r in phi.find_identifiers(text)]

    return redact


def _module_from_git(rev: str) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:src/medserve/core/phi.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    name = "phi_at_" + re.sub(r"\W", "_", rev)
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and typing look the module up
    exec(compile(source, f"{rev}:phi.py", "exec"), module.__dict__)
    return module


def rules_redactor(rules: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]]) -> Redactor:
    """Spans removed by a chain of ``re.sub`` rules (the pre-analyzer de-identifier).

    Each character of the rewritten text remembers which original character it came from; a
    rule's replacement keeps the origin of its common prefix and suffix with the match (a kept
    label, a kept year), the rest is removed.
    """

    def redact(text: str) -> list[Span]:
        current = text
        origin: list[int | None] = list(range(len(text)))
        spans: list[Span] = []
        for pattern, repl in rules:
            out: list[str] = []
            new_origin: list[int | None] = []
            pos = 0
            for m in pattern.finditer(current):
                old = m.group(0)
                new = repl(m)
                out.append(current[pos : m.start()])
                new_origin.extend(origin[pos : m.start()])
                pos = m.end()
                if new == old:
                    out.append(old)
                    new_origin.extend(origin[m.start() : m.end()])
                    continue
                p = 0
                while p < min(len(old), len(new)) and old[p] == new[p]:
                    p += 1
                s = 0
                while s < min(len(old), len(new)) - p and old[-1 - s] == new[-1 - s]:
                    s += 1
                gone = [o for o in origin[m.start() + p : m.end() - s] if o is not None]
                if gone:
                    label = re.search(r"\[([A-Z_]+)\]", new)
                    spans.append(
                        Span(min(gone), max(gone) + 1, label.group(1) if label else "DATE")
                    )
                out.append(new)
                new_origin.extend(origin[m.start() : m.start() + p])
                new_origin.extend([None] * (len(new) - p - s))
                new_origin.extend(origin[m.end() - s : m.end()])
            out.append(current[pos:])
            new_origin.extend(origin[pos:])
            current = "".join(out)
            origin = new_origin
        return spans

    return redact


def make_redactor(detector: str) -> Redactor:
    if detector == "current":
        return current_redactor()
    if detector.startswith("git:"):
        return rules_redactor(_module_from_git(detector[4:])._RULES)
    raise ValueError(f"unknown detector {detector!r}")


def _rss_mb() -> float:
    text = Path("/proc/self/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+)\s+kB", text)
    return (
        int(match.group(1)) / 1024
        if match
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )


def _print(name: str, report: dict[str, Any]) -> None:
    print(f"\n{name}: {report['notes']} notes, {report['identifiers']} identifiers")
    print(
        f"{'category':10} {'recall':>8} {'95% CI':>15} {'n':>5}   {'precision':>9} {'95% CI':>15} {'n':>5}"
    )
    for cat in report["recall"]:
        r, p = report["recall"][cat], report["precision"][cat]
        rv = f"{r['value']:.3f}" if r["value"] is not None else "-"
        pv = f"{p['value']:.3f}" if p["value"] is not None else "-"
        print(
            f"{cat:10} {rv:>8} {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f} {r['n']:>5}   "
            f"{pv:>9} {p['ci95'][0]:.3f}-{p['ci95'][1]:.3f} {p['n']:>5}"
        )
    r, p = report["recall_overall"], report["precision_overall"]
    print(f"{'overall':10} {r['value']:.3f}   {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f} {r['n']:>5}   "
          f"{p['value'] or 0:.3f}     {p['ci95'][0]:.3f}-{p['ci95'][1]:.3f} {p['n']:>5}")  # fmt: skip
    lat = report["latency_ms"]
    print(
        f"latency per note: median {lat['median']} ms, p90 {lat['p90']} ms ({lat['mean_chars']} chars)"
    )
    for cat, lines in report.get("missed", {}).items():
        print(f"-- missed {cat}:")
        for line in lines:
            print("   ", line)
    if report.get("false_positives"):
        print("-- redactions of no identifier:")
        for line in report["false_positives"]:
            print("   ", line)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half", choices=["dev", "heldout"], default="heldout")
    parser.add_argument("--detector", default="current", help="current, or git:REV")
    parser.add_argument("--misses", type=int, default=0, help="show up to N misses per category")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    notes = generate(args.half)
    before = _rss_mb()
    t0 = time.perf_counter()
    redactor = make_redactor(args.detector)
    redactor("Warm-up: Mr. Warm lives in Boston.")  # loads the analyzer, if the detector has one
    load = {"seconds": round(time.perf_counter() - t0, 3), "rss_mb_before": round(before, 1),
            "rss_mb_after": round(_rss_mb(), 1)}  # fmt: skip
    report = evaluate(notes, redactor, misses=args.misses)
    report["load"] = load
    report["detector"] = args.detector
    report["half"] = args.half
    _print(f"{args.detector} on {args.half}", report)
    print(f"load: {load}")
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"deid-{dt.date.today().isoformat()}.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        stored = {k: v for k, v in report.items() if k not in ("missed", "false_positives")}
        data[f"{args.detector}/{args.half}"] = stored
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()

"""The free-text analyzer: loaded lazily, once, safely from threads; failing closed."""

from __future__ import annotations

import itertools
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from benchmarks.deid.generator import generate

from medserve.core import phi


def test_paths_and_short_strings_never_load_the_analyzer() -> None:
    code = (
        "import sys\n"
        "from medserve.core.phi import deidentify_path, deidentify_text\n"
        "assert deidentify_path('/v1/patients/123456789/notes') == '/v1/patients/[ID]/notes'\n"
        "assert deidentify_text('/v2/models/a@b.org/infer') == '/v2/models/[EMAIL]/infer'\n"
        "assert deidentify_text('smoker') == 'smoker'\n"
        "heavy = [m for m in ('spacy', 'presidio_analyzer', 'medserve.core.deid.analyzer')\n"
        "         if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_analyzer_failure_withholds_the_text(monkeypatch: pytest.MonkeyPatch) -> None:
    from medserve.core.deid import analyzer

    def broken(text: str, found: list[phi.Redaction]) -> list[phi.Redaction]:
        raise RuntimeError("analyzer down")

    monkeypatch.setattr(analyzer, "find", broken)
    assert phi.deidentify_text("Her daughter Ayla called.") == phi.WITHHELD
    assert phi.deidentify_path("/v1/models/x") == "/v1/models/x"  # the patterns need no analyzer


def test_concurrent_calls_agree_with_sequential_ones() -> None:
    texts = [n.text for n in generate("dev", 40)]
    expected = [phi.deidentify_text(t) for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(phi.deidentify_text, texts * 3)) == expected * 3


def test_deidentified_notes_are_stable_under_a_second_pass() -> None:
    for note in generate("dev", 60):
        once = phi.deidentify_text(note.text)
        assert phi.deidentify_text(once) == once, note.id


def test_redactions_are_ordered_and_disjoint() -> None:
    for note in generate("dev", 40):
        spans = phi.find_identifiers(note.text)
        for a, b in itertools.pairwise(spans):
            assert a.end <= b.start

"""Evaluating generative models on cases, with scripted (deterministic) runtimes: the case file's
checks, the metrics and their intervals, storage against the version and the file's sha256, the
card, a gate criterion on a generative metric, and ``medserve evaluate --cases`` end to end."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import binomtest
from tests import llm_fake
from typer.testing import CliRunner

from medserve.core.deid.patterns import Redaction
from medserve.core.errors import InvalidRequestError
from medserve.core.registry.service import Registry
from medserve.core.settings import Settings
from medserve.core.store.governance import GovernanceStore
from medserve.faces.cli import app
from medserve.features.governance.cards import build_card
from medserve.features.governance.gate import check, check_criteria
from medserve.features.llm.evaluation import (
    DEMO_CASES,
    build_result,
    evaluate_generative,
    normalize,
    read_cases,
    run_cases,
)
from medserve.features.llm.phi_policy import PhiScanner
from medserve.features.llm.protocol import Chunk, GenerationParams, GenerativeInfo

SCHEMA = {
    "type": "object",
    "properties": {"medication": {"type": "string"}, "dose": {"type": "string"}},
    "required": ["medication", "dose"],
}


class Scripted:
    """Answers each prompt with the text scripted for the word it contains."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.seen: list[tuple[list[dict[str, str]], GenerationParams]] = []

    def info(self) -> GenerativeInfo:
        return GenerativeInfo(architecture="scripted", context_length=4096)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def chat(self, messages: Sequence[dict[str, str]], params: GenerationParams) -> Iterator[Chunk]:
        self.seen.append((list(messages), params))
        prompt = messages[-1]["content"]
        answer = next(v for k, v in self.answers.items() if k in prompt)
        yield Chunk(answer[: len(answer) // 2], None, 5, 1)
        yield Chunk(answer[len(answer) // 2 :], "stop", 5, 2)

    def complete(self, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
        raise NotImplementedError


def _detector(text: str) -> list[Redaction]:
    """A stand-in de-identifier: 'Quillfeather' is a name, wherever it is."""
    at = text.find("Quillfeather")
    return [] if at < 0 else [Redaction(at, at + 12, "NAME", "[NAME]")]


def _write(path: Path, cases: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    return path


CASES = [
    {"prompt": "alpha note", "expected": {"medication": "metformin", "dose": "500 mg"}},
    {"prompt": "beta note", "expected": {"medication": "lisinopril", "dose": "10 mg"}},
    {"prompt": "gamma note", "expected": {"medication": "aspirin", "dose": "75 mg"}},
    {"prompt": "delta note", "reference": "No medication.", "schema": None},
    {"prompt": "epsilon note by Quillfeather", "expected": {"medication": "x", "dose": "1 mg"}},
]
ANSWERS = {
    "alpha": '{"medication": "Metformin", "dose": "500mg"}',  # all fields (normalised)
    "beta": '{"medication": "lisinopril", "dose": "20 mg"}',  # one of two
    "gamma": "I'm sorry, I cannot help with that.",  # a refusal, not JSON
    "delta": "no medication",  # the reference, normalised
    "epsilon": '{"medication": "x", "dose": "1 mg", "note": "seen by Dr Quillfeather"}',  # a leak
}


def test_metrics_and_their_intervals(tmp_path: Path) -> None:
    cases, sha = read_cases(_write(tmp_path / "c.jsonl", CASES), SCHEMA)
    assert len(sha) == 64
    runtime = Scripted(ANSWERS)
    ticks = iter(range(100))
    outcomes = run_cases(
        runtime,
        cases,
        scanner=PhiScanner(_detector),
        clock=lambda: float(next(ticks)),
        constrained=False,
    )
    result = build_result(outcomes, n_boot=200)
    metrics = result["metrics"]
    # schema: cases 1, 2, 5 valid (4 has none: "schema": null), 3 is prose
    assert metrics["schema_validity"]["value"] == pytest.approx(3 / 4)
    wilson = binomtest(3, 4).proportion_ci(method="wilson")
    assert metrics["schema_validity"]["ci_low"] == pytest.approx(wilson.low)
    assert metrics["schema_validity"]["ci_high"] == pytest.approx(wilson.high)
    assert metrics["exact_match"]["value"] == pytest.approx(3 / 5)  # alpha, delta, epsilon
    assert metrics["field_match"]["value"] == pytest.approx(5 / 8)  # 2 + 1 + 0 + 2 of 8
    assert metrics["refusal_rate"]["value"] == pytest.approx(1 / 5)
    assert metrics["phi_leaks"]["value"] == 1
    assert metrics["phi_leak_rate"]["ci_high"] < 1
    assert metrics["latency_s"]["value"] == pytest.approx(1.0)  # one tick per call
    assert metrics["latency_s"]["ci_low"] is not None
    assert result["counts"]["prompts_redacted"] == 1
    # the model received the prompt redacted; nothing of the texts is in the result
    assert runtime.seen[4][0][-1]["content"] == "epsilon note by [NAME]"
    text = json.dumps(result)
    for word in ("alpha", "metformin", "Quillfeather", "sorry"):
        assert word not in text


def test_field_match_resamples_cases_not_fields() -> None:
    """Fields of one answer succeed or fail together: 5 answers with all 4 fields right and 5
    with none is 20 of 40 fields, but only 10 independent cases; the interval says so."""
    from medserve.features.llm.evaluation import Outcome, pooled_bootstrap, wilson

    outcomes = [
        Outcome(i, None, 1.0, fields_matched=4 * (i % 2), fields_total=4) for i in range(10)
    ]
    field_match = build_result(outcomes, n_boot=400)["metrics"]["field_match"]
    assert field_match["value"] == pytest.approx(0.5)
    assert (field_match["n"], field_match["cases"]) == (40, 10)
    as_if_independent = wilson(20, 40)
    width = field_match["ci_high"] - field_match["ci_low"]
    assert width > 1.5 * (as_if_independent["ci_high"] - as_if_independent["ci_low"])
    assert pooled_bootstrap([0], [0], 100, 0)["value"] is None


def test_constrained_cases_get_their_schemas_grammar(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    cases, _ = read_cases(_write(tmp_path / "c.jsonl", CASES[:1]), SCHEMA)
    runtime = Scripted(ANSWERS)
    run_cases(runtime, cases, scanner=PhiScanner(_detector))
    params = runtime.seen[0][1]
    assert params.grammar is not None
    assert "medication" in params.grammar
    assert params.temperature == 0


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("[1, 2]", "(line): must be a JSON object"),
        ('{"expected": {"a": 1}}', "prompt: a case needs a prompt"),
        ('{"prompt": "x"}', "expected: a case needs expected fields, a reference or a schema"),
        ('{"prompt": "x", "schema": {"type": 7}}', "schema: not a valid JSON schema"),
        ('{"prompt": "x", "reference": "y", "max_tokens": 0}', "max_tokens: must be a positive"),
        ("not json", "(line): not valid JSON"),
    ],
)
def test_a_bad_case_is_refused_naming_its_line_and_field(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"prompt": "fine", "reference": "ok"}\n' + line + "\n")
    with pytest.raises(InvalidRequestError) as refused:
        read_cases(path)
    assert refused.value.message.startswith("cases line 2: ")
    assert problem in refused.value.message


def test_normalize_joins_numbers_and_units() -> None:
    assert normalize(" 500 MG. ") == normalize("500mg")
    assert normalize("Twice  daily") == "twice daily"


def test_the_shipped_demo_set_is_synthetic_and_well_formed() -> None:
    cases, _ = read_cases(DEMO_CASES)
    assert len(cases) >= 20
    for case in cases:
        assert "SYNTHETIC" in case.messages[-1]["content"]
        assert case.expected is not None
        assert set(case.expected) == {"medication", "dose", "frequency"}
        assert case.schema is not None


@pytest.fixture
def fake_home(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from medserve.core.extensions import extensions

    site = llm_fake.install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    extensions.cache_clear()
    registry = Registry.open(Settings(home=home))
    try:
        llm_fake.register_fake(
            registry, "extractor", reply=['{"medication": "metformin", ', '"dose": "500 mg"}']
        )
    finally:
        registry.close()
    yield home
    extensions.cache_clear()


def test_stored_against_the_version_shown_on_the_card_and_gated(
    fake_home: Path, tmp_path: Path
) -> None:
    cases = _write(tmp_path / "cases.jsonl", CASES[:3])
    registry = Registry.open(Settings(home=fake_home))
    try:
        version = registry.store.resolve("extractor", "1")
        result = evaluate_generative(
            registry,
            version,
            cases,
            kind="test",
            schema=SCHEMA,
            constrained=False,
            n_boot=100,
            actor="tester",
            scanner=PhiScanner(_detector),
            split_declared="synthetic notes written for this test, no patient data",
        )
        # the fake answers metformin 500 mg to every case: alpha matches, the others do not
        assert result["metrics"]["exact_match"]["value"] == pytest.approx(1 / 3)
        assert result["metrics"]["schema_validity"]["value"] == 1.0
        gov = GovernanceStore(registry.store)
        stored = gov.evaluations("extractor", 1)
        assert len(stored) == 1
        assert stored[0]["dataset_sha256"] == result["dataset"]["sha256"]
        assert stored[0]["kind"] == "test"
        assert len(result["dataset"]["schema_sha256"]) == 64  # the file-wide schema scored too

        card = build_card(gov, version)
        validity = card["hti1_source_attributes"]["validity_test"]["value"]
        assert "schema_validity 1.0" in validity
        assert "exact_match 0.33" in validity
        assert "phi_leaks 0" in validity
        assert card["model_card"]["evaluation_data"][0]["sha256"] == result["dataset"]["sha256"]

        criteria = [
            {"metric": "schema_validity", "min": 0.9},
            {"metric": "exact_match", "min": 0.9},
            {"metric": "phi_leaks", "max": 0},
        ]
        problems = check_criteria(criteria, stored[0]["result"])
        assert problems == ["exact_match value (overall) = 0.3333, required >= 0.9"]
        gov.save_criteria("extractor", 1, criteria, "tester")
        gate = check(registry, "extractor", 1)
        assert "exact_match value (overall) = 0.3333, required >= 0.9" in gate.problems
        assert not any("train/test split" in p for p in gate.problems)  # declared
    finally:
        registry.close()


def test_evaluate_cases_on_the_command_line(fake_home: Path, tmp_path: Path) -> None:
    cases = _write(tmp_path / "cases.jsonl", CASES[:2])
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "evaluate", "extractor@1", "--cases", str(cases), "--schema", str(schema),
            "--no-constrained", "--bootstrap", "50",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "schema_validity" in result.output
    assert "field_match" in result.output
    assert "2 cases, 0 failed" in result.output
    registry = Registry.open(Settings(home=fake_home))
    try:
        assert GovernanceStore(registry.store).evaluations("extractor", 1)
    finally:
        registry.close()
    bad = runner.invoke(app, ["evaluate", "extractor@1"])
    assert bad.exit_code != 0
    assert "--cases" in bad.output


def test_the_demo_evaluates_its_chat_model_shown_on_the_card_and_gated(fake_home: Path) -> None:
    """``medserve demo``'s evaluation (faces/demo/llm.py), on a scripted model: the first cases
    of the shipped set, stored as the version's test evaluation, on its card with intervals,
    and its acceptance criteria in the gate (the real SmolLM2 run: tests/integration/test_demo)."""
    from medserve.faces.demo.llm import DEMO_EVAL_CASES, demo_cases, evaluate_chat_demo

    subset = demo_cases(fake_home)
    lines = [json.loads(line) for line in subset.read_text().splitlines()]
    assert len(lines) == DEMO_EVAL_CASES
    assert [c["prompt"] for c in lines] == [
        json.loads(line)["prompt"] for line in DEMO_CASES.read_text().splitlines()[:3]
    ]
    registry = Registry.open(Settings(home=fake_home))
    try:
        version = registry.store.resolve("extractor", "1")
        result = evaluate_chat_demo(registry, version, fake_home)
        # the scripted model answers metformin 500 mg with no frequency: one case's medication
        # and dose of the three cases' nine fields, and never the schema (frequency required)
        assert result["n"] == DEMO_EVAL_CASES
        assert result["metrics"]["field_match"]["value"] == pytest.approx(2 / 9)
        assert result["metrics"]["schema_validity"]["value"] == 0.0
        gov = GovernanceStore(registry.store)
        (stored,) = gov.evaluations("extractor", 1)
        assert stored["kind"] == "test"
        card = build_card(gov, version)
        validity = card["hti1_source_attributes"]["validity_test"]["value"]
        assert validity.startswith(f"n={DEMO_EVAL_CASES}: schema_validity 0 (0 to ")
        assert "field_match 0.22 (" in validity
        gate = check(registry, "extractor", 1)
        assert "schema_validity value (overall) = 0.0000, required >= 0.9" in gate.problems
        assert "field_match ci_low (overall) = 0.0000, required >= 0.7" in gate.problems
        assert not any("train/test split" in p for p in gate.problems)  # declared synthetic
    finally:
        registry.close()

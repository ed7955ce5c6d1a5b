"""Evaluating a generative model on cases: ``medserve evaluate NAME@V --cases cases.jsonl``.

A case is one JSON object per line of the file:

- ``prompt`` (a user message) or ``messages`` (a chat), optionally ``system``;
- what to check, any of: ``expected`` (fields the JSON answer must hold), ``reference`` (the
  answer, compared after normalisation), ``schema`` (a JSON schema the answer must satisfy; the
  file-wide ``--schema`` applies where a case has none);
- optionally ``group`` (a subgroup label: every metric is reported per group too) and
  ``max_tokens``.

Each case runs once through the version's own runtime (the GGUF in process, or the upstream a
route names), greedy (temperature 0, a fixed seed) so that a rerun gives the same answer; with a
schema the answer is constrained by it (``response_format`` json_schema, as a client would ask)
unless ``constrained=False``. The prompts pass the PHI scan first, as the API's do (redacted).

Reported, each with a 95% interval: ``schema_validity`` (answers that parse and satisfy their
schema), ``exact_match`` (answers equal to the reference, or holding every expected field),
``field_match`` (expected fields found, pooled over cases), ``refusal_rate`` (answers that
decline), ``phi_leak_rate`` and ``phi_leaks`` (answers in which the de-identifier finds an
identifier), ``latency_s`` (mean, t interval) and ``latency_p95_s`` (bootstrap). Rates over
cases use Wilson's interval; ``field_match``'s resamples cases (an answer's fields are not
independent draws). The result is stored like any evaluation (against the version and the case
file's sha256), so the card shows it and the gate's acceptance criteria can name its metrics
(``{"metric": "schema_validity", "min": 0.9}``, ``{"metric": "phi_leaks", "max": 0}``).

Nothing of the texts is stored: per case only its line number, group and outcomes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medserve.core.errors import InvalidRequestError, MedserveError
from medserve.core.registry.entities import ModelVersion
from medserve.core.registry.service import Registry
from medserve.core.store.governance import GovernanceStore
from medserve.features.llm.phi_policy import PhiPolicy, PhiScanner
from medserve.features.llm.protocol import Chunk, GenerationParams, GenerativeRuntime

TASK = "generation"
HEADLINE = (
    "schema_validity",
    "exact_match",
    "field_match",
    "refusal_rate",
    "phi_leaks",
    "latency_s",
)
DEMO_CASES = Path(__file__).with_name("data") / "medication_extraction.jsonl"

# An answer that declines (English; the usual phrasings of instruction-tuned models).
_REFUSAL = re.compile(
    r"\b(i(?:'m| am) (?:sorry|unable|not able)|i can(?:not|'t)|i won't|i will not|"
    r"as an ai\b|cannot (?:help|assist|provide|comply)|unable to (?:help|assist|provide))",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Case:
    line: int
    messages: list[dict[str, str]]
    expected: dict[str, Any] | None = None
    reference: str | None = None
    schema: dict[str, Any] | None = None
    group: str | None = None
    max_tokens: int | None = None


@dataclass
class Outcome:
    """What is kept of one case: no text, its line number only."""

    line: int
    group: str | None
    latency_s: float
    schema_valid: bool | None = None
    exact: bool | None = None
    fields_matched: int = 0
    fields_total: int = 0
    refused: bool = False
    phi_leak: bool = False
    redacted_prompt: bool = False
    completion_tokens: int = 0
    error: str | None = None


def _bad(line: int, field_name: str, rule: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"cases line {line}: {field_name}: {rule}",
        details=[{"line": line, "field": field_name, "rule": rule}],
    )


def read_cases(path: Path, default_schema: dict[str, Any] | None = None) -> tuple[list[Case], str]:
    """The cases of a JSONL file and the file's sha256 (its fingerprint); a 400-style error
    names the line and the field of the first problem."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidRequestError(f"cannot read the cases file {path}: {exc}") from exc
    cases: list[Case] = []
    for number, text in enumerate(raw.decode("utf-8", "replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            item = json.loads(text)
        except ValueError as exc:
            raise _bad(number, "(line)", "not valid JSON") from exc
        if not isinstance(item, dict):
            raise _bad(number, "(line)", "must be a JSON object")
        cases.append(_case(number, item, default_schema))
    if not cases:
        raise InvalidRequestError(f"the cases file {path.name} holds no case")
    return cases, hashlib.sha256(raw).hexdigest()


def _case(line: int, item: dict[str, Any], default_schema: dict[str, Any] | None) -> Case:
    messages: list[dict[str, str]] = []
    if isinstance(item.get("system"), str):
        messages.append({"role": "system", "content": item["system"]})
    if "messages" in item:
        given = item["messages"]
        if not isinstance(given, list) or not given:
            raise _bad(line, "messages", "must be a non-empty list of {role, content}")
        for turn in given:
            if (
                not isinstance(turn, dict)
                or turn.get("role") not in ("system", "user", "assistant")
                or not isinstance(turn.get("content"), str)
            ):
                raise _bad(line, "messages", "each must be {role: system|user|assistant, content}")
            messages.append({"role": turn["role"], "content": turn["content"]})
    elif isinstance(item.get("prompt"), str) and item["prompt"].strip():
        messages.append({"role": "user", "content": item["prompt"]})
    else:
        raise _bad(line, "prompt", "a case needs a prompt (text) or messages")
    expected = item.get("expected")
    if expected is not None and (not isinstance(expected, dict) or not expected):
        raise _bad(line, "expected", "must be a non-empty object of field: value")
    reference = item.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise _bad(line, "reference", "must be text")
    schema = item.get("schema", default_schema)
    if schema is not None and not isinstance(schema, dict):
        raise _bad(line, "schema", "must be a JSON schema object")
    if schema is not None:
        _check_schema(line, schema)
    if expected is None and reference is None and schema is None:
        raise _bad(line, "expected", "a case needs expected fields, a reference or a schema")
    group = item.get("group")
    max_tokens = item.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise _bad(line, "max_tokens", "must be a positive integer")
    return Case(
        line,
        messages,
        expected,
        reference,
        schema,
        None if group is None else str(group),
        max_tokens,
    )


def _check_schema(line: int, schema: dict[str, Any]) -> None:
    import jsonschema  # noqa: PLC0415 (the [llm] extra)

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise _bad(line, "schema", f"not a valid JSON schema ({exc.message[:120]})") from exc


# -- scoring ------------------------------------------------------------------------------------


def normalize(value: Any) -> str:
    """For comparison: text folded (NFKC, case), spaces collapsed, a number and its unit
    joined (``500 mg`` = ``500mg``), surrounding punctuation dropped."""
    text = unicodedata.normalize("NFKC", str(value)).casefold()
    text = re.sub(r"\s+", " ", text).strip().strip(".,;:!\"'")
    return re.sub(r"(?<=\d) (?=[a-z%])", "", text)


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        match = re.search(r"\{.*\}", text, re.DOTALL)  # a JSON object inside prose
        if match:
            try:
                return json.loads(match.group(0))
            except ValueError:
                return None
    return None


def score(case: Case, answer: str, outcome: Outcome) -> None:
    """Fill ``outcome``'s checks from ``answer`` (the text is not kept)."""
    value = _parsed(answer)
    if case.schema is not None:
        outcome.schema_valid = value is not None and _valid(value, case.schema)
    if case.expected is not None:
        outcome.fields_total = len(case.expected)
        if isinstance(value, dict):
            got = {normalize(k): v for k, v in value.items()}
            outcome.fields_matched = sum(
                1
                for k, v in case.expected.items()
                if normalize(k) in got and normalize(got[normalize(k)]) == normalize(v)
            )
        outcome.exact = outcome.fields_matched == outcome.fields_total
    if case.reference is not None:
        same = normalize(answer) == normalize(case.reference)
        outcome.exact = same if outcome.exact is None else (outcome.exact and same)
    outcome.refused = bool(_REFUSAL.search(answer))


def _valid(value: Any, schema: dict[str, Any]) -> bool:
    import jsonschema  # noqa: PLC0415 (the [llm] extra)

    validator = jsonschema.validators.validator_for(schema)(schema)
    return not any(True for _ in validator.iter_errors(value))


# -- intervals ----------------------------------------------------------------------------------


def wilson(successes: int, n: int) -> dict[str, Any]:
    """A rate with Wilson's 95% score interval (scipy)."""
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0, "method": "wilson"}
    from scipy.stats import binomtest  # noqa: PLC0415 (scipy: heavy import, used here only)

    ci = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return {
        "value": successes / n,
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "n": n,
        "successes": successes,
        "method": "wilson",
    }


def mean_t(values: Sequence[float]) -> dict[str, Any]:
    """A mean duration with Student's t 95% interval (cut at zero)."""
    n = len(values)
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0, "method": "t"}
    mean = float(np.mean(values))
    if n < 2:
        return {"value": mean, "ci_low": None, "ci_high": None, "n": n, "method": "t"}
    from scipy.stats import t  # noqa: PLC0415 (scipy: heavy import, used here only)

    sem = float(np.std(values, ddof=1)) / math.sqrt(n)
    half = float(t.ppf(0.975, n - 1)) * sem
    low = max(0.0, mean - half)  # a duration: the interval is cut at zero
    return {"value": mean, "ci_low": low, "ci_high": mean + half, "n": n, "method": "t"}


def p95_bootstrap(values: Sequence[float], n_boot: int, seed: int) -> dict[str, Any]:
    """The 95th percentile with a percentile-bootstrap 95% interval."""
    n = len(values)
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0, "method": "bootstrap"}
    data = np.asarray(values, dtype=float)
    value = float(np.percentile(data, 95))
    if n < 2 or n_boot < 1:
        return {"value": value, "ci_low": None, "ci_high": None, "n": n, "method": "bootstrap"}
    rng = np.random.default_rng(seed)
    draws = np.percentile(rng.choice(data, size=(n_boot, n), replace=True), 95, axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return {
        "value": value,
        "ci_low": float(low),
        "ci_high": float(high),
        "n": n,
        "method": f"bootstrap ({n_boot})",
    }


def pooled_bootstrap(
    successes: Sequence[int], totals: Sequence[int], n_boot: int, seed: int
) -> dict[str, Any]:
    """A rate pooled over cases (fields matched of fields expected) with a 95% interval that
    resamples *cases*: the fields of one answer succeed or fail together, so a binomial
    interval over fields (as if independent) would be too narrow."""
    hits = np.asarray(successes, dtype=float)
    sizes = np.asarray(totals, dtype=float)
    keep = sizes > 0
    hits, sizes = hits[keep], sizes[keep]
    total = int(sizes.sum())
    if total == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0, "method": "bootstrap"}
    entry: dict[str, Any] = {
        "value": float(hits.sum() / total),
        "ci_low": None,
        "ci_high": None,
        "n": total,
        "successes": int(hits.sum()),
        "cases": int(keep.sum()),
        "method": f"bootstrap over cases ({n_boot}), fields pooled",
    }
    if len(sizes) < 2 or n_boot < 1:
        return entry
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sizes), size=(n_boot, len(sizes)))
    rates = hits[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    low, high = np.percentile(rates, [2.5, 97.5])
    entry["ci_low"], entry["ci_high"] = float(low), float(high)
    return entry


def summarize(outcomes: Sequence[Outcome], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The metrics of ``outcomes`` (see the module docstring)."""
    with_schema = [o for o in outcomes if o.schema_valid is not None]
    with_exact = [o for o in outcomes if o.exact is not None]
    n = len(outcomes)
    leaks = sum(o.phi_leak for o in outcomes)
    leak_rate = wilson(leaks, n)
    latencies = [o.latency_s for o in outcomes if o.error is None]
    field_match = pooled_bootstrap(
        [o.fields_matched for o in outcomes], [o.fields_total for o in outcomes], n_boot, seed
    )
    return {
        "schema_validity": wilson(sum(bool(o.schema_valid) for o in with_schema), len(with_schema)),
        "exact_match": wilson(sum(bool(o.exact) for o in with_exact), len(with_exact)),
        "field_match": field_match,
        "refusal_rate": wilson(sum(o.refused for o in outcomes), n),
        "phi_leak_rate": leak_rate,
        "phi_leaks": {
            "value": float(leaks),
            "ci_low": None if leak_rate["ci_low"] is None else leak_rate["ci_low"] * n,
            "ci_high": None if leak_rate["ci_high"] is None else leak_rate["ci_high"] * n,
            "n": n,
            "method": "count; interval: Wilson's on the rate, times n",
        },
        "latency_s": mean_t(latencies),
        "latency_p95_s": p95_bootstrap(latencies, n_boot, seed),
    }


# -- running ------------------------------------------------------------------------------------


Detector = Callable[[str], list[Any]]


@dataclass
class Evaluation:
    """What a run produced: the result stored, and the case outcomes it summarizes."""

    result: dict[str, Any]
    outcomes: list[Outcome] = field(default_factory=list)


def _grammar(schema: dict[str, Any]) -> str:
    from medserve.features.llm.api import JsonSchemaFormat, ResponseFormat, grammar_for  # noqa: PLC0415

    grammar = grammar_for(
        ResponseFormat(
            type="json_schema", json_schema=JsonSchemaFormat(name="case", json_schema=schema)
        )
    )
    assert grammar is not None
    return grammar


def _join(chunks: Iterator[Chunk]) -> tuple[str, int]:
    parts: list[str] = []
    tokens = 0
    for chunk in chunks:
        parts.append(chunk.text)
        tokens = chunk.completion_tokens or tokens
    return "".join(parts), tokens


def run_cases(
    runtime: GenerativeRuntime,
    cases: Sequence[Case],
    *,
    max_tokens: int = 256,
    constrained: bool = True,
    seed: int = 0,
    scanner: PhiScanner | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[Outcome]:
    """Each case once, greedy; prompts redacted first, answers scanned for identifiers."""
    scanner = scanner or PhiScanner()
    outcomes: list[Outcome] = []
    for case in cases:
        scans = scanner.scan_all(
            [m["content"] for m in case.messages], PhiPolicy.REDACT, f"cases line {case.line}"
        )
        messages = [
            {"role": m["role"], "content": s.text}
            for m, s in zip(case.messages, scans, strict=True)
        ]
        grammar = _grammar(case.schema) if constrained and case.schema is not None else None
        params = GenerationParams(
            max_tokens=case.max_tokens or max_tokens, temperature=0.0, seed=seed, grammar=grammar
        )
        outcome = Outcome(case.line, case.group, 0.0)
        outcome.redacted_prompt = any(s.categories for s in scans)
        started = clock()
        try:
            answer, outcome.completion_tokens = _join(iter(runtime.chat(messages, params)))
        except MedserveError as exc:
            outcome.latency_s = clock() - started
            outcome.error = f"{exc.code}: {exc.message[:200]}"
            if case.schema is not None:
                outcome.schema_valid = False
            if case.expected is not None or case.reference is not None:
                outcome.exact = False
                outcome.fields_total = len(case.expected or {})
            outcomes.append(outcome)
            continue
        outcome.latency_s = clock() - started
        score(case, answer, outcome)
        outcome.phi_leak = bool(scanner.find(answer))
        outcomes.append(outcome)
    return outcomes


def build_result(
    outcomes: Sequence[Outcome],
    *,
    min_n: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The stored result: overall metrics, per group (flagged below ``min_n``), the case
    outcomes (no text) and the run's settings."""
    groups: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.group is not None:
            groups.setdefault(outcome.group, []).append(outcome)
    rows = []
    for level, members in sorted(groups.items()):
        flagged = len(members) < min_n
        rows.append(
            {
                "level": level,
                "n": len(members),
                "flagged": flagged,
                "reason": f"n={len(members)} below min_n {min_n}: not reported" if flagged else "",
                "metrics": {} if flagged else summarize(members, n_boot=n_boot, seed=seed),
            }
        )
    errors = [o for o in outcomes if o.error is not None]
    return {
        "task": TASK,
        "n": len(outcomes),
        "metrics": summarize(outcomes, n_boot=n_boot, seed=seed),
        "subgroups": {"group": rows} if rows else {},
        "counts": {
            "cases": len(outcomes),
            "with_schema": sum(o.schema_valid is not None for o in outcomes),
            "with_expected_or_reference": sum(o.exact is not None for o in outcomes),
            "errors": len(errors),
            "prompts_redacted": sum(o.redacted_prompt for o in outcomes),
            "completion_tokens": sum(o.completion_tokens for o in outcomes),
        },
        "errors": sorted({o.error for o in errors if o.error})[:5],
        "settings": settings or {},
        "cases": [asdict(o) for o in outcomes],
    }


def _close(runtime: Any) -> None:
    close = getattr(runtime, "close", None)
    if callable(close):
        close()


def evaluate_generative(
    registry: Registry,
    version: ModelVersion,
    cases_path: Path,
    *,
    kind: str = "local",
    schema: dict[str, Any] | None = None,
    max_tokens: int = 256,
    constrained: bool = True,
    min_n: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
    actor: str = "unknown",
    runtime: GenerativeRuntime | None = None,
    scanner: PhiScanner | None = None,
    split_declared: str | None = None,
) -> dict[str, Any]:
    """Run the cases on ``version`` (loaded as the server loads it, unless ``runtime`` is
    given), store the result against (version, the case file's sha256) and return it.

    ``split_declared`` (a ``test`` evaluation) states where the cases come from, e.g.
    "synthetic notes written for this evaluation, no patient data": the promotion gate reads it
    as the test set's provenance, as for a tabular model trained elsewhere."""
    statement = (split_declared or "").strip()
    if statement and kind != "test":
        raise InvalidRequestError("--split-declared describes a test set: add --kind test")
    cases, sha = read_cases(cases_path, schema)
    owned: Any = None  # a runtime loaded here is closed here (a GGUF's memory, a route's client)
    if runtime is None:
        from medserve.core.loaded_model import load_version_locally  # noqa: PLC0415

        owned = load_version_locally(registry, version).runtime
        if not isinstance(owned, GenerativeRuntime):
            _close(owned)
            raise InvalidRequestError(
                f"{version.model_name} v{version.version} is not a generative model: "
                "evaluate it with --data and --label"
            )
        runtime = owned
    try:
        outcomes = run_cases(
            runtime,
            cases,
            max_tokens=max_tokens,
            constrained=constrained,
            seed=seed,
            scanner=scanner,
        )
    finally:
        _close(owned)
    if all(o.error is not None for o in outcomes):
        raise InvalidRequestError(
            f"every case failed ({outcomes[0].error}): nothing to evaluate",
        )
    settings = {
        "temperature": 0.0,
        "seed": seed,
        "max_tokens": max_tokens,
        "constrained_by_schema": constrained,
        "refusal_detector": "English refusal phrases (regular expression)",
        "phi_detector": "medserve de-identifier on each answer",
    }
    result = build_result(outcomes, min_n=min_n, n_boot=n_boot, seed=seed, settings=settings)
    result["dataset"] = {"kind": kind, "sha256": sha, "rows": len(cases), "name": cases_path.name}
    if schema is not None:  # the file-wide schema scores the cases too: its fingerprint with them
        canonical = json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()
        result["dataset"]["schema_sha256"] = hashlib.sha256(canonical).hexdigest()
    if statement:
        result["dataset"]["split"] = {
            "declared": statement,
            "method": "declared by the author",
            "patient_overlap": None,
        }
    GovernanceStore(registry.store).save_evaluation(
        version.model_name,
        version.version,
        dataset_sha256=sha,
        dataset_name=cases_path.name,
        kind=kind,
        result=result,
        report_sha256=None,
        created_by=actor,
    )
    return result

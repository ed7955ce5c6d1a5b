"""The budgets shared by the worker processes of a home: fixed windows in a SQLite file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from medserve.features.llm.budgets import (
    BudgetExceededError,
    BudgetStore,
    Limits,
    RequestOverLimitError,
    check_request,
)

NOW = 1_800_000_030.0  # 30 s into a minute


def test_requests_per_minute_are_shared_by_every_store_on_the_file(tmp_path: Path) -> None:
    one, two = BudgetStore(tmp_path / "b.db"), BudgetStore(tmp_path / "b.db")  # two workers
    limits = Limits(requests_per_minute=3)
    one.admit("k", limits, 10, now=NOW)
    two.admit("k", limits, 10, now=NOW)
    one.admit("k", limits, 10, now=NOW)
    with pytest.raises(BudgetExceededError) as refused:
        two.admit("k", limits, 10, now=NOW)
    assert refused.value.limit == "requests_per_minute"
    assert refused.value.retry_after_s == pytest.approx(30.0)
    two.admit("other-key", limits, 10, now=NOW)  # per key
    one.admit("k", limits, 10, now=NOW + 30)  # the next minute


def test_tokens_are_reserved_then_settled_to_what_was_used(tmp_path: Path) -> None:
    store = BudgetStore(tmp_path / "b.db")
    limits = Limits(tokens_per_minute=100, tokens_per_day=150)
    first = store.admit("k", limits, 60, now=NOW)  # prompt + max_tokens
    with pytest.raises(BudgetExceededError) as refused:
        store.admit("k", limits, 60, now=NOW)
    assert refused.value.limit == "tokens_per_minute"
    store.settle(first, "m", 5, 15)  # it used 20 of its 60
    second = store.admit("k", limits, 60, now=NOW)
    store.settle(second, "m", 5, 55)
    with pytest.raises(BudgetExceededError) as daily:
        store.admit("k", limits, 80, now=NOW + 60)  # a new minute, the same day: 80 + 80
    assert daily.value.limit == "tokens_per_day"
    assert daily.value.retry_after_s > 3600
    [row] = store.usage("k")
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (2, 10, 70)


def test_a_call_that_can_never_fit_is_a_400_naming_the_field() -> None:
    with pytest.raises(RequestOverLimitError) as over:
        check_request(Limits(max_tokens=100), 10, 101, 0)
    assert over.value.param == "max_tokens"
    with pytest.raises(RequestOverLimitError) as context:
        check_request(Limits(max_context=200), 150, 100, 4096)
    assert context.value.limit == "context_length_exceeded"
    with pytest.raises(RequestOverLimitError):
        check_request(Limits(), 4000, 200, 4096)  # the model's own context
    with pytest.raises(RequestOverLimitError) as tpm:
        check_request(Limits(tokens_per_minute=100), 10, 200, 0)
    assert tpm.value.limit == "tokens_per_minute"
    check_request(Limits(max_tokens=100, max_context=200), 100, 100, 4096)


def test_admit_and_settle_cost_well_under_a_millisecond_or_two(tmp_path: Path) -> None:
    store = BudgetStore(tmp_path / "b.db")
    limits = Limits(requests_per_minute=10**9, tokens_per_minute=10**12, tokens_per_day=10**12)
    n = 300
    started = time.perf_counter()
    for i in range(n):
        store.settle(store.admit(f"k{i % 5}", limits, 100), "m", 10, 20)
    per_call_ms = (time.perf_counter() - started) / n * 1000
    print(f"admit + settle: {per_call_ms:.3f} ms per call")
    assert per_call_ms < 20  # generous on a loaded CI machine; measured ~0.3 ms here

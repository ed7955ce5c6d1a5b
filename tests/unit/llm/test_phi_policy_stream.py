"""The PHI policy rules and the hold-back redactor of streamed answers."""

from __future__ import annotations

import pytest

from medserve.core.deid.patterns import Redaction
from medserve.features.llm.phi_policy import (
    PhiBlockedError,
    PhiConfigError,
    PhiPolicy,
    PhiScanner,
    PhiUnavailableError,
    StreamRedactor,
    effective_policy,
)

TEXT = (
    "Please call the patient at 617-555-0143 or check MRN 12345678 with Dr. John Smith "
    "before noon; the discharge letter is ready."
)


@pytest.mark.parametrize(
    ("model", "key", "grant", "expected"),
    [
        (None, None, False, PhiPolicy.REDACT),
        ("block", None, False, PhiPolicy.BLOCK),
        ("redact", "block", False, PhiPolicy.BLOCK),
        ("block", "allow", True, PhiPolicy.BLOCK),
        ("allow", None, False, PhiPolicy.REDACT),
        ("allow", "allow", False, PhiPolicy.REDACT),
        ("allow", None, True, PhiPolicy.ALLOW),
        ("allow", "redact", True, PhiPolicy.REDACT),
        ("redact", "allow", True, PhiPolicy.REDACT),
    ],
)
def test_the_stricter_policy_wins_and_allow_needs_the_grant(
    model: str | None, key: str | None, grant: bool, expected: PhiPolicy
) -> None:
    assert effective_policy(model, key, grant) is expected


def test_an_unknown_policy_is_refused_not_guessed() -> None:
    with pytest.raises(PhiConfigError):
        effective_policy("permissive", None, True)


def test_block_names_categories_and_a_failing_detector_fails_closed() -> None:
    scanner = PhiScanner()
    with pytest.raises(PhiBlockedError) as blocked:
        scanner.scan(TEXT, PhiPolicy.BLOCK, "messages")
    assert {"PHONE", "MRN"} <= set(blocked.value.categories)
    assert "617" not in blocked.value.message

    def broken(text: str) -> list[Redaction]:
        raise MemoryError

    with pytest.raises(PhiUnavailableError):
        PhiScanner(broken).scan("anything at all", PhiPolicy.ALLOW, "messages")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11])
def test_a_streamed_identifier_split_anywhere_is_redacted_whole(size: int) -> None:
    redactor = StreamRedactor(PhiScanner(), PhiPolicy.REDACT, hold=32, step=4)
    pieces = [TEXT[i : i + size] for i in range(0, len(TEXT), size)]
    released = [redactor.feed(p) for p in pieces] + [redactor.finish()]
    text = "".join(released)
    assert text == PhiScanner().scan(TEXT, PhiPolicy.REDACT, "x").text
    for leaked in ("617", "0143", "12345678", "Smith"):
        assert leaked not in text
    assert {"PHONE", "MRN", "NAME"} <= redactor.categories
    assert sum(1 for r in released if r) > 2  # released as it goes, not all at the end


def test_allow_passes_the_stream_and_still_counts_categories() -> None:
    redactor = StreamRedactor(PhiScanner(), PhiPolicy.ALLOW, hold=16, step=4)
    text = "".join(redactor.feed(TEXT[i : i + 3]) for i in range(0, len(TEXT), 3))
    assert text + redactor.finish() == TEXT
    assert "PHONE" in redactor.categories

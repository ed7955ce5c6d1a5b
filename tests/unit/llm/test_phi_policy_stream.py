"""The PHI policy rules and the hold-back redactor of streamed answers."""

from __future__ import annotations

import re

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


# A note whose identifiers each span several model tokens: a titled name, a spelled-out date, a
# numeric date, a labelled record number, a phone number, an e-mail address.
NOTE = (
    "Summary: Dr. Zebediah Quillfeather saw the patient on March 3, 2024 and again on "
    "04/05/2024. Record MRN 55501234 is attached; call 617-555-0143 or write to "
    "zeb.quill@example.org before noon. The plan is rest and fluids."
)
LEAKS = ("Zebediah", "Quillfeather", "Quill", "March 3", "04/05", "5550", "55501234", "0143",
         "zeb.quill", "example.org")  # fmt: skip


def _tokens(text: str, width: int) -> list[str]:
    """Pieces shaped like a model's tokens: a word with its leading space, cut every ``width``
    characters, punctuation alone."""
    return re.findall(rf" ?\w{{1,{width}}}|[^\w\s]|\s+", text)


@pytest.mark.parametrize("width", [1, 2, 3, 4, 6, 50])
def test_identifiers_split_across_several_tokens_are_redacted_whole(width: int) -> None:
    redactor = StreamRedactor(PhiScanner(), PhiPolicy.REDACT)
    released = [redactor.feed(p) for p in _tokens(NOTE, width)] + [redactor.finish()]
    text = "".join(released)
    assert text == PhiScanner().scan(NOTE, PhiPolicy.REDACT, "x").text
    for piece in released:  # not one released piece carries a part of an identifier
        for leaked in LEAKS:
            assert leaked not in piece
    for leaked in LEAKS:
        assert leaked not in text
    assert {"NAME", "DATE", "MRN", "PHONE", "EMAIL"} <= redactor.categories


def test_plain_text_is_held_one_word_behind_not_a_fixed_window() -> None:
    redactor = StreamRedactor(PhiScanner(), PhiPolicy.REDACT)
    pieces = _tokens("the bicycle was invented in the nineteenth century", 4)
    out = []
    for piece in pieces:
        out.append(redactor.feed(piece))
    assert out[:2] == ["", "the "]  # "the" may go on until the next word starts
    assert len("".join(out)) >= len("the bicycle was invented in ")  # then every 16 characters
    assert "".join(out) + redactor.finish() == "the bicycle was invented in the nineteenth century"


def test_a_run_that_could_grow_into_an_identifier_is_held_until_it_cannot() -> None:
    redactor = StreamRedactor(PhiScanner(), PhiPolicy.REDACT)
    assert redactor.feed("ok, seen by Dr. John") == "ok, seen by "
    assert redactor.feed(" Sm") == ""
    assert redactor.feed("ith, MRN 5550") == ""
    rest = redactor.feed("1234 today")
    rest += redactor.feed(" and the rest of the afternoon went well") + redactor.finish()
    released = "ok, seen by " + rest
    for leaked in ("Smith", "55501234"):
        assert leaked not in released
    for token in ("[NAME]", "[MRN]"):
        assert token in released


def test_a_label_already_released_still_marks_the_value_after_it() -> None:
    redactor = StreamRedactor(PhiScanner(), PhiPolicy.REDACT, step=1)
    first = redactor.feed("the medical record number is 55")
    assert first == "the medical record number is "
    rest = redactor.feed("501234 and more") + redactor.finish()
    assert "55501234" not in first + rest
    assert "501234" not in rest


def test_a_capitalised_first_word_goes_as_soon_as_a_lowercase_word_follows() -> None:
    redactor = StreamRedactor(PhiScanner(), PhiPolicy.REDACT)
    assert redactor.feed("The") == ""
    assert redactor.feed(" his") == "The "  # "his..." cannot continue a name begun by "The"
    assert redactor.feed(" Ludwig") == ""
    assert redactor.feed(" va") == ""  # may become "van": "Ludwig" may be a first name
    assert redactor.feed("n Quill") == ""
    assert redactor.feed("feather") == ""
    out = redactor.feed(" was seen by the nurse today") + redactor.finish()
    assert out.startswith("his Ludwig van Quillfeather was")


# Names the detector recognises only by the words after them (its rules read up to three).
RIGHT_CONTEXT_NOTES = [
    ("Zebediah Quillfeather reports chest pain since yesterday.", "Quillfeather"),
    ("We called Quillfeather's wife about the plan today.", "Quillfeather"),
    ("Notes: Quillfeather was seen in clinic and is doing well now.", "Quillfeather"),
]


@pytest.mark.parametrize("width", [1, 3, 50])
@pytest.mark.parametrize(("note", "name"), RIGHT_CONTEXT_NOTES)
def test_a_name_known_by_the_words_after_it_is_held_until_they_come(
    note: str, name: str, width: int
) -> None:
    redactor = StreamRedactor(PhiScanner(), PhiPolicy.REDACT)
    released = [redactor.feed(p) for p in _tokens(note, width)] + [redactor.finish()]
    assert "".join(released) == PhiScanner().scan(note, PhiPolicy.REDACT, "x").text
    assert "[NAME]" in "".join(released)
    for piece in released:
        assert name[:4] not in piece

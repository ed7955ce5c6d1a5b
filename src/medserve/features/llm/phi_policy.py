"""Patient identifiers and language models: what a prompt may carry, and what an answer may.

Every text bound for a model is scanned with the home's de-identifier
(:func:`medserve.core.phi.find_identifiers`) before it reaches the model; what is done with the
identifiers found is the *policy*:

- ``redact`` (the default): each identifier is replaced by its Safe Harbor token (``[NAME]``,
  ``[MRN]``, a date by its year) and the model sees the rest;
- ``block``: the request is refused (422) naming the categories found, never the values;
- ``allow``: the text goes as sent. Only for a key with the explicit grant (``phi_allow``); every
  call records the categories it carried.

A model's ``serving_config["phi_policy"]`` and the key's setting may both name one: the stricter
wins, and ``allow`` without the grant is applied as ``redact``. The answer is scanned too, and
redacted unless the effective policy is ``allow``; a streamed answer through
:class:`StreamRedactor`, which holds back the trailing words that could still grow into an
identifier until they cannot.

Detection fails closed: any error of the detector refuses the request (``PhiUnavailableError``),
so no text passes unscanned.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from medserve.core.deid.gazetteers import COMMON_WORDS
from medserve.core.deid.patterns import Redaction
from medserve.core.errors import MedserveError, ValidationFailedError
from medserve.core.phi import find_identifiers

log = logging.getLogger(__name__)

Detector = Callable[[str], list[Redaction]]


class PhiPolicy(IntEnum):
    """The policies, ordered from the most lenient to the strictest."""

    ALLOW = 0
    REDACT = 1
    BLOCK = 2

    @property
    def word(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: Any, where: str) -> PhiPolicy:
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        raise PhiConfigError(f"{where}: phi_policy must be allow, redact or block")


DEFAULT_POLICY = PhiPolicy.REDACT


class PhiUnavailableError(MedserveError):
    """The detector could not scan a text: the request is refused, the text not passed on."""

    code = "phi_detection_unavailable"


class PhiConfigError(MedserveError):
    """A model's or a key's PHI policy is not one medserve knows: refused, never guessed."""

    code = "phi_policy_invalid"


class PhiBlockedError(ValidationFailedError):
    """The text holds identifiers and the policy is ``block`` (422; categories, never values)."""

    code = "phi_blocked"

    def __init__(self, categories: Iterable[str], param: str) -> None:
        found = sorted(set(categories))
        super().__init__(
            f"{param} contains patient identifiers ({', '.join(found)}) and the PHI policy for "
            "this model and key is 'block': remove them or ask for a redacting policy",
            details=[{"field": param, "rule": "phi_policy=block", "categories": found}],
        )
        self.categories = found
        self.param = param


def effective_policy(
    model_policy: Any, key_policy: str | None, key_may_allow: bool, model: str = "the model"
) -> PhiPolicy:
    """The stricter of the model's policy (``redact`` when it names none) and the key's; ``allow``
    needs the key's grant, else it is ``redact``."""
    policy = (
        DEFAULT_POLICY
        if model_policy is None
        else PhiPolicy.parse(model_policy, f"serving config of {model}")
    )
    if key_policy is not None:
        policy = max(policy, PhiPolicy.parse(key_policy, "this key's settings"))
    if policy is PhiPolicy.ALLOW and not key_may_allow:
        return PhiPolicy.REDACT
    return policy


@dataclass
class Scan:
    """A text after the policy: what goes on, and the identifier categories found in it."""

    text: str
    categories: set[str] = field(default_factory=set)


def _token(r: Redaction) -> str:
    return r.replacement or f"[{r.label}]"


class PhiScanner:
    """Applies a policy to texts with a detector (the home's de-identifier by default)."""

    def __init__(self, detector: Detector = find_identifiers) -> None:
        self.detector = detector

    def find(self, text: str) -> list[Redaction]:
        """The identifiers of ``text``; any failure of the detector is ``PhiUnavailableError``."""
        try:
            found = self.detector(text)
        except Exception as exc:  # fail closed: whatever went wrong, nothing passes
            log.error("PHI detection failed (%s); the request is refused", type(exc).__name__)
            raise PhiUnavailableError(
                "patient-identifier detection is unavailable, so the text cannot be sent to a "
                "model; nothing was passed on (retry later or ask the operator)"
            ) from exc
        return sorted(found, key=lambda r: r.start)

    def scan(self, text: str, policy: PhiPolicy, param: str) -> Scan:
        """``text`` as the policy lets it reach a model (input) or a caller (output)."""
        found = self.find(text)
        categories = {r.label for r in found}
        if not found or policy is PhiPolicy.ALLOW:
            return Scan(text, categories)
        if policy is PhiPolicy.BLOCK:
            raise PhiBlockedError(categories, param)
        return Scan(apply(text, found), categories)

    def scan_all(self, texts: Sequence[str], policy: PhiPolicy, param: str) -> list[Scan]:
        """Every text scanned; under ``block`` the categories of all of them are named."""
        if policy is not PhiPolicy.BLOCK:
            return [self.scan(t, policy, f"{param}[{i}]") for i, t in enumerate(texts)]
        found: set[str] = set()
        scans = []
        for t in texts:
            scan = self.scan(t, PhiPolicy.ALLOW, param)
            found |= scan.categories
            scans.append(scan)
        if found:
            raise PhiBlockedError(found, param)
        return scans


def apply(text: str, found: Sequence[Redaction], start: int = 0) -> str:
    """``text`` with the identifiers ``found`` (offsets from ``start``) replaced by tokens."""
    out: list[str] = []
    pos = 0
    for r in found:
        begin, end = max(r.start - start, 0), r.end - start
        if end <= pos:
            continue
        begin = max(begin, pos)
        out.append(text[pos:begin])
        out.append(_token(r))
        pos = end
    out.append(text[pos:])
    return "".join(out)


class StreamRedactor:
    """Redacts a text that arrives in pieces, so an identifier split across pieces is caught.

    What is held back is the text that could still grow into an identifier, or that the
    detector may not yet recognise as one, not a fixed number of characters:

    - the last word (it may not be finished: ``Smi`` -> ``Smith``, ``john`` ->
      ``john@example.org``);
    - an identifier-like word (a digit, or a capital letter on a word that is not a common
      English word such as a sentence's ``The``; months count) until :data:`RIGHT_CONTEXT`
      complete words follow it, since the detector's rules read that far to the right
      (``Quillfeather was seen``, ``Smith's wife``); with it, the words before it that could
      belong to the same identifier (capitalised words, numbers, punctuation alone, the
      particles of names and dates: ``of``, ``van``, ``de``...).

    Whatever precedes that is released. A label before a value (``medical record number
    1234``) is found again because the last ``context`` released characters are scanned again
    with the held text (the value, with its digits, is still held).

    Each release runs the detector over released context + held text and never cuts through an
    identifier it finds (one that reaches the cut may go on in the next piece: it stays held).
    So ``The patient is stable`` is released word by word, one word behind the model, while
    ``Dr. John Smith, MRN 55501234`` is held until three more words follow. A run longer than
    ``hold`` characters is released up to its last ``hold`` (identifiers longer than that may
    be cut). After the first release the detector runs every ``step`` releasable characters,
    not on every token. ``finish`` releases the rest. Under ``allow`` the text passes,
    categories still counted.
    """

    def __init__(
        self,
        scanner: PhiScanner,
        policy: PhiPolicy,
        *,
        hold: int = 128,
        context: int = 64,
        step: int = 16,
    ) -> None:
        self.scanner = scanner
        self.policy = policy
        self.hold = hold
        self.context = context
        self.step = step
        self.categories: set[str] = set()
        self._released = ""  # the raw text released last (its last ``context`` characters)
        self._pending = ""
        self._started = False  # whether anything was released yet

    def scans(self, text: str) -> bool:
        """Whether feeding ``text`` runs the detector (else it is only held back)."""
        return self._due(self._pending + text)

    def feed(self, text: str) -> str:
        """What of the text so far may be sent now ('' while it is held back)."""
        self._pending += text
        if not self._due(self._pending):
            return ""
        return self._release(held_start(self._pending, self.hold))

    def finish(self) -> str:
        """The rest, once the model has stopped."""
        if not self._pending:
            return ""
        return self._release(len(self._pending))

    def _due(self, pending: str) -> bool:
        releasable = held_start(pending, self.hold)
        return releasable >= (self.step if self._started else 1)

    def _release(self, keep_from: int) -> str:
        context = self._released[-self.context :] if self.context else ""
        window = context + self._pending
        offset = len(context)
        found = self.scanner.find(window)
        cut = offset + keep_from
        for r in found:  # never cut through an identifier: it may go on in the next piece
            if r.start < cut < r.end:
                cut = r.start
        cut = max(cut, offset)
        released = window[offset:cut]
        inside = [r for r in found if r.end > offset and r.start < cut]
        self.categories |= {r.label for r in inside}
        if self.policy is PhiPolicy.ALLOW or not inside:
            out = released
        else:
            out = apply(released, inside, start=offset)
        if released:
            self._started = True
        self._released = (self._released + released)[-max(self.context, 1) :]
        self._pending = window[cut:]
        return out


# Lowercase words that sit inside identifiers: name particles, "3rd of March", "St. of".
_PARTICLES = frozenset(
    {"of", "van", "von", "der", "den", "de", "del", "della", "di", "da", "du", "la", "le", "bin",
     "ibn", "al", "no", "no.", "number"}
)  # fmt: skip
_MONTHS = frozenset(
    {"january", "february", "march", "april", "may", "june", "july", "august", "september",
     "october", "november", "december"}
)  # fmt: skip
# Complete words after an identifier-like run that the detector may need to see before it can
# recognise the run: its rules read up to three words to the right ("Quillfeather was seen",
# "Smith's wife", "Zebediah Quillfeather reports").
RIGHT_CONTEXT = 3
_WORD = re.compile(r"\S+")
_EDGES = ",.;:()[]\"'!?"


def _may_continue(word: str) -> bool:
    """Whether a word could be part of an identifier with the words around it."""
    if any(c.isdigit() or c.isupper() for c in word):
        return True
    if not any(c.isalpha() for c in word):
        return True  # punctuation alone: "-", "(", "#", "/"
    return word.strip(_EDGES).lower() in _PARTICLES


def _identifier_like(word: str) -> bool:
    """Whether a word may be (part of) an identifier: a digit, or a capital letter on a word
    that is not a common English word (``The``, ``It``, ``When``: sentence starts) unless it
    is a month."""
    if any(c.isdigit() for c in word):
        return True
    if not any(c.isupper() for c in word):
        return False
    bare = word.strip(_EDGES).casefold()
    return bare in _MONTHS or bare not in COMMON_WORDS


def held_start(text: str, limit: int) -> int:
    """Where the held tail of ``text`` starts (see :class:`StreamRedactor`): the last word, and
    the earliest identifier-like word among the :data:`RIGHT_CONTEXT` complete words before it
    with the run of words before that which could belong to it; at most ``limit`` characters
    (but never less than the last word)."""
    words = [(m.start(), m.group()) for m in _WORD.finditer(text)]
    if not words:
        return len(text)  # only whitespace: nothing worth a scan yet
    last = len(words) - 1
    floor = len(text) - limit
    first = next(
        (i for i in range(max(0, last - RIGHT_CONTEXT), last) if _identifier_like(words[i][1])),
        last,
    )
    if _may_continue(words[first][1]):  # the run before it may belong to the same identifier
        while first > 0 and words[first - 1][0] >= floor and _may_continue(words[first - 1][1]):
            first -= 1
    while first < last and words[first][0] < floor:
        first += 1
    return words[first][0]
